"""GPU kernels, each written once and tested on the CPU (Triton's interpreter) and as PTX without a GPU."""
from vita_deploy.kernels.ms_deform_attn import TritonUnavailableError, ms_deform_attn_triton

__all__ = ["TritonUnavailableError", "ms_deform_attn_triton"]
