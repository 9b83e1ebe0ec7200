"""Extraction: the embedding cache, the pipeline that fills it, distributed runs and augmentation."""
