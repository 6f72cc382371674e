"""edgepack: compress a PyTorch CNN, export ONNX and TFLite, validate every artifact."""

__version__ = "0.1.0"
