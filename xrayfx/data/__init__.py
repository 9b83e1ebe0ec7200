"""Data: decoding and preprocessing radiographs, phantoms, source readers and the one manifest reader."""
