"""Hyperparameter tuning: random search on each dimension's own scale, coarse to fine, many
trials at once in local processes or on a Ray cluster, persisted in SQLite (`bnserve tune`)."""
