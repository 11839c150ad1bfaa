"""Pure tables to numbers: thresholds, official metrics, submission files, evaluation-set ground truth."""
