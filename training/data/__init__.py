"""Data: sources (the built-in set, CSV, Parquet, NPZ), readers, the float32 cache, batches, folds
and targets, from a file on disk to standardized mini-batches."""
