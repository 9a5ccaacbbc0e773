"""VITA video instance segmentation from PyTorch to ONNX and TensorRT; the command is `vita-deploy` (vita_deploy/__main__.py)."""
__version__ = "0.1.0"
