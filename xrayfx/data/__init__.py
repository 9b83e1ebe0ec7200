"""Data layer: images, preprocessing, sources, manifests and near-duplicate detection."""
