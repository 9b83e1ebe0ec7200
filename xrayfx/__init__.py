"""xrayfx: transfer-learning classification of chest radiographs.

Frozen ImageNet backbones exported once to ONNX, embeddings cached in zarr,
light heads trained on the cache, and reports that say what the numbers mean.
"""

__version__ = "0.1.0"
