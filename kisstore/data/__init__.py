"""Inputs of extraction: items (facts) and text corpora."""
