"""The result tools: what a run or its retrain says, read from the run directory."""
