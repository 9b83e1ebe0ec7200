"""Backbones and their models: the registry of ONNX files added to a cache."""
