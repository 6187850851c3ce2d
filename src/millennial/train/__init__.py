"""Training: one loop (accelerate) for TRM phase 1, whole-hybrid phase 2 and the LoRA baseline."""
