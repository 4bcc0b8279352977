"""What a candidate record may say: its statuses (DESIGN.md "The run directory").

Torch-free, so the result commands that only read parquet need not import the trainer.
"""

# `stopped`: halted at a progressive hurdle, with the scores of the rung it reached.
STATUSES = ("ok", "invalid", "duplicate", "equivalent", "unstable", "low_quality", "stopped", "failed")
