"""Models layer: backbone registry, model configuration, export, added ONNX backbones, lower-precision variants."""
