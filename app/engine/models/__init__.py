"""Models: the variant catalogue, checkpoints on disk, loading a variant into a warmed-up runner, the model
repository that loads and unloads while serving, the export cache, label mapping, the accuracy guard and faults."""
