"""MillennialAi: TRM injection into pretrained causal LMs, as a reproducible pipeline."""

__version__ = "0.1.0"
