"""Inference: runtimes and sessions that turn uint8 batches into embeddings, one ONNX verification."""
