"""ONNX export of the two graphs (frame detector, VITA head) with a manifest for the engine builder/runtime."""
