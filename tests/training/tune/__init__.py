"""Tests of bnserve.training.tune (a package so its test module names do not clash with others)."""
