"""Data: decoding, image quality checks, file access, data sets and sources."""
