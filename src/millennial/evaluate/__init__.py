"""Evaluation: was the injection worth it? Base vs TRM (phase 1, phase 2) vs LoRA vs LLaMA Pro.

Each arm is scored on its own (`scoring.evaluate_arm`, one DVC stage per arm, so a new TRM
variant re-scores only itself): every arm answers the same held-out examples, a hundred per
(task, split), with greedy decoding, and its per-example results are kept. `compare.compare`
then sets the arms side by side: accuracy with Wilson intervals, the answer loss per task (the
headline is the mean over tasks), perplexity on general text (what the base kept), a recursion
sweep of the TRM's test-time depth, training cost, and each difference against the TRM with a
paired interval.

Decode speed is timed inside each arm's stage against a reference that computes what the base
computes, interleaved run by run (`millennial.evaluate.speed` says why): a ratio across two
stages would compare two processes at different times.

`millennial.evaluate.report` renders the comparison; the `evaluate_<arm>` and `evaluate` stages
wire both to files. `config` holds the validated `evaluate:` params.

This package file imports nothing: every submodule import runs it, and the stages that only
compare and report (`config`, `compare`, `report`, `stats`, `timing`) must not pay for torch.
"""
