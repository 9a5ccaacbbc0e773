"""TensorRT engine building (trtexec-style), on datacenter TensorRT or TensorRT-RTX."""
