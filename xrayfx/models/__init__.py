"""Backbones as models: registry, configuration, export and lower-precision variants."""
