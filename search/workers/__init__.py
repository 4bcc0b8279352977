"""Where candidates train: the executor interface, in-process and on Ray worker actors, and the
surrogate evaluator that stands in for training in smoke tests."""
