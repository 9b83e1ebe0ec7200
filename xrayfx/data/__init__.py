"""Data layer: decoding, preprocessing, image quality, file access, phantoms, sources, manifests, near-duplicates."""
