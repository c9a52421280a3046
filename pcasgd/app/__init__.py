"""The training application: datasets, models, the training run, metrics files, the CLI's work."""
