"""Our deformable-attention TensorRT plugin: the Triton kernel as an ahead-of-time (AOT) `tensorrt.plugin`.

Datacenter TensorRT >= 10.9 only (`tensorrt.plugin` with `aot_impl`). At build time TensorRT calls the plugin's
`aot_impl`, which compiles the Triton kernel to PTX for the building GPU and returns it with its launch
parameters as symbolic expressions of the input shapes; the engine then carries the kernel, so `trtexec
--loadEngine`, C++ or our Python runtime run it without Python plugin code. ONNX nodes (`--deform-attn
vita-plugin`): op_type `ms_deform_attn`, domain / plugin_namespace `vita_deploy`, `aot=1`.

Everything TensorRT-free is a plain function of ints (or of anything with + - * //, which TensorRT's shape
expressions are), so CI tests it without TensorRT: output shape, supported dtypes, grid, block, extra arguments.
`register()` is the thin TensorRT part, written to NVIDIA's documented API
(https://docs.nvidia.com/deeplearning/tensorrt/latest/_static/python-api/pluginGuide.html) and tested through
NVIDIA's own plugin layer (tests/test_tensorrt_plugin_layer.py). That layer inspects the annotations of the
functions it registers as classes, so this module must not use `from __future__ import annotations`.
"""
import logging
from pathlib import Path
from types import ModuleType

from vita_deploy.engines.errors import EngineBuildError
from vita_deploy.export.plugin import VITA_PLUGIN

log = logging.getLogger("vita_deploy.engines")

PLUGIN_ID = f"{VITA_PLUGIN.domain}::{VITA_PLUGIN.op_type}"  # "vita_deploy::ms_deform_attn"
MIN_TENSORRT = (10, 9)  # @trtp.aot_impl; the parser takes the namespace from plugin_namespace
# I/O type combinations (value, spatial_shapes, level_start_index, sampling_locations, attention_weights, output):
# values fp32 / fp16 / bf16; locations and weights fp32 (positions and accumulation are fp32 in the kernel).
TYPE_COMBINATIONS = "FP32|FP16|BF16, INT32, INT32, FP32, FP32, FP32|FP16|BF16"


def output_shape(value_shape, loc_shape) -> tuple:
    """(N, S, M, D), (N, Lq, M, L, P, 2) -> (N, Lq, M, D); works on ints and on TensorRT shape expressions."""
    return (value_shape[0], loc_shape[1], value_shape[2], value_shape[3])


def extra_args(value_shape, loc_shape) -> tuple:
    """The kernel's int32 arguments between inputs and output, in its order: (N, S, Lq)."""
    return (value_shape[0], value_shape[1], loc_shape[1])


def kernel_constants(value_shape, loc_shape) -> dict[str, int]:
    """Sizes compiled into the PTX (M, D, L, P): they must be build-time constants of the graph."""
    sizes = {"heads": value_shape[2], "channels": value_shape[3], "levels": loc_shape[3], "points": loc_shape[4]}
    out = {}
    for name, v in sizes.items():
        if hasattr(v, "is_constant"):  # TensorRT ShapeExpr
            if not v.is_constant:
                raise ValueError(f"the plugin needs a fixed {name} size; the graph has a dynamic one: re-export")
            v = v.constant_value()
        out[name] = int(v)
    return out


def launch_params(value_shape, loc_shape, block_q: int, num_warps: int, shared: int, div=None) -> dict:
    """Grid (query blocks, N * M, 1), block (num_warps * 32 threads) and shared memory of one launch."""
    from vita_deploy.kernels.ms_deform_attn import cdiv, launch_grid

    grid = launch_grid(value_shape[0], loc_shape[1], value_shape[2], block_q, div or cdiv)
    return {"grid_x": grid[0], "grid_y": grid[1], "grid_z": grid[2], "block_x": num_warps * 32, "block_y": 1,
            "block_z": 1, "shared_mem": shared}


def supports_aot_plugins(trt: ModuleType) -> tuple[bool, str]:
    """(whether this TensorRT can build our AOT plugin, why not)."""
    if trt.__name__.startswith("tensorrt_rtx"):
        return False, ("TensorRT-RTX cannot host Python-defined plugins (its parser imports only C++ IPluginV3 "
                       "plugins registered through an IPluginCreatorV3One)")
    try:
        version = tuple(int(x) for x in trt.__version__.split(".")[:2])
    except ValueError:
        version = (0, 0)
    if version < MIN_TENSORRT:
        return False, f"TensorRT {trt.__version__} has no ahead-of-time Python plugins (needs >= 10.9)"
    try:
        import tensorrt.plugin as trtp  # noqa: F401
    except ImportError as e:
        return False, f"tensorrt.plugin cannot be imported ({e})"
    if not hasattr(trtp, "aot_impl"):
        return False, f"TensorRT {trt.__version__}'s tensorrt.plugin has no aot_impl"
    return True, ""


def _dtype_name(trt, dtype) -> str:
    names = {trt.float32: "float32", trt.float16: "float16"}
    if hasattr(trt, "bfloat16"):
        names[trt.bfloat16] = "bfloat16"
    if dtype not in names:
        raise ValueError(f"unsupported dtype {dtype} for {PLUGIN_ID}")
    return names[dtype]


class PluginRegistrationError(EngineBuildError):
    """Our plugin could not be registered with TensorRT's plugin registry; the message names the cause and the fix."""


# The outcome of the one registration attempt of this process: TensorRT's registry cannot take a plugin id twice,
# so a failed attempt is remembered and reported again as it was, never retried.
_registered: str | None = None
_failure: PluginRegistrationError | None = None


def uses_vita_plugin(onnx_path: str | Path) -> bool:
    """Whether the ONNX graph has a node of our plugin (op_type `ms_deform_attn` in domain `vita_deploy`): only such
    graphs need it registered (the weights, in external data, are not read)."""
    import onnx

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    return any(n.op_type == VITA_PLUGIN.op_type and n.domain == VITA_PLUGIN.domain for n in graph.node)


def register() -> str:
    """Register the plugin with TensorRT's plugin registry once per process; returns its id. Needs datacenter
    TensorRT >= 10.9, triton and a CUDA GPU at build time (the PTX is for the building GPU's compute capability).

    A failure raises PluginRegistrationError with the cause, and the same error again on every later call."""
    global _registered, _failure
    if _registered is not None:
        return _registered
    if _failure is not None:
        raise _failure
    try:
        _define_plugin()
    except Exception as e:  # NVIDIA's validation raises ValueError/TypeError; the import, ImportError
        _failure = PluginRegistrationError(
            f"our TensorRT plugin {PLUGIN_ID} (`--deform-attn vita-plugin` graphs) could not be registered with "
            f"TensorRT {_tensorrt_version()}'s tensorrt.plugin: {type(e).__name__}: {str(e).rstrip('.')}. Build a `--deform-attn "
            "native` or `--deform-attn plugin` export instead, or report this with the TensorRT version")
        _failure.__cause__ = e
        raise _failure from e
    _registered = PLUGIN_ID
    return _registered


def _tensorrt_version() -> str:
    try:
        import tensorrt

        return str(tensorrt.__version__)
    except Exception:  # the registration failure itself is what gets reported
        return "?"


def _define_plugin() -> None:
    """The `tensorrt.plugin` definitions: I/O description, type combinations, ahead-of-time implementation."""
    import tensorrt as trt
    import tensorrt.plugin as trtp

    from vita_deploy.kernels.ptx import compile_ptx, triton_hidden_params, without_hidden_params

    @trtp.register(PLUGIN_ID)
    def _desc(value: trtp.TensorDesc, spatial_shapes: trtp.TensorDesc, level_start_index: trtp.TensorDesc,
              sampling_locations: trtp.TensorDesc, attention_weights: trtp.TensorDesc) -> trtp.TensorDesc:
        return trtp.from_shape_expr(output_shape(value.shape_expr, sampling_locations.shape_expr),
                                    dtype=value.dtype)

    @trtp.autotune(PLUGIN_ID)
    def _autotune(value: trtp.TensorDesc, spatial_shapes: trtp.TensorDesc, level_start_index: trtp.TensorDesc,
                  sampling_locations: trtp.TensorDesc, attention_weights: trtp.TensorDesc,
                  outputs: tuple[trtp.TensorDesc]) -> list[trtp.AutoTuneCombination]:
        return [trtp.AutoTuneCombination(TYPE_COMBINATIONS)]

    @trtp.aot_impl(PLUGIN_ID)
    def _aot(value: trtp.TensorDesc, spatial_shapes: trtp.TensorDesc, level_start_index: trtp.TensorDesc,
             sampling_locations: trtp.TensorDesc, attention_weights: trtp.TensorDesc,
             outputs: tuple[trtp.TensorDesc], tactic: int
             ) -> tuple[bytes, bytes, trtp.KernelLaunchParams, trtp.SymIntExprs]:
        import torch

        major, minor = torch.cuda.get_device_capability()
        vshape, lshape = value.shape_expr, sampling_locations.shape_expr
        compiled = compile_ptx(major * 10 + minor, **kernel_constants(vshape, lshape),
                               value_dtype=_dtype_name(trt, value.dtype),
                               loc_dtype=_dtype_name(trt, sampling_locations.dtype),
                               attn_dtype=_dtype_name(trt, attention_weights.dtype))
        params = trtp.KernelLaunchParams()
        for key, v in launch_params(vshape, lshape, compiled.block_q, compiled.num_warps, compiled.shared,
                                    div=trtp.cdiv).items():
            setattr(params, key, v)
        extras = trtp.SymIntExprs.from_tuple([trtp.SymInt32(e) for e in extra_args(vshape, lshape)])
        log.info("%s: PTX for sm_%d%d (%d bytes, %d warps)", PLUGIN_ID, major, minor, len(compiled.ptx),
                 compiled.num_warps)
        # TensorRT passes inputs, the int extras and outputs only: drop the scratch pointers Triton appends.
        ptx = without_hidden_params(compiled.ptx, triton_hidden_params())
        return compiled.name.encode(), ptx.encode(), params, extras
