"""NVIDIA's real `tensorrt.plugin` layer on a machine without TensorRT's compiled core.

The `tensorrt-cu13-bindings` wheel ships the plugin layer as pure Python (`tensorrt_bindings/plugin/`: registration,
validation, tensor and shape descriptors, the JIT/AOT plugin classes) beside `tensorrt.so`, which needs libnvinfer
and cannot load here. `plugin_layer()` puts a stand-in for the compiled core's classes and enums in
`sys.modules["tensorrt"]` and loads the wheel's own plugin package as `tensorrt.plugin`, so that our plugin
(`vita_deploy.engines.vita_plugin`) goes through NVIDIA's decorators, validation and descriptor code unchanged.

The stand-ins are only what that layer touches of the core: enums (DataType, DimensionOperation, ...), plain
records (Dims, PluginField, PluginTensorDesc, ...), empty interface bases (IPluginV3, ...), a plugin registry, and
TensorRT's symbolic dimension expressions. `Expr` plays `trt.IDimensionExpr`: a function of named dimensions
(`Expr.sym("N")`) built by `ExprBuilder.operation` as TensorRT's IExprBuilder would, so a test can evaluate the
launch parameters the plugin returns for any concrete N and Lq.
"""
from __future__ import annotations

import contextlib
import enum
import importlib.util
import sys
import types
from collections.abc import Iterator
from pathlib import Path

import numpy as np

TENSORRT_VERSION = "11.4.0.106"  # the bindings wheel pinned in pyproject.toml's dev extra


class Expr:
    """trt.IDimensionExpr: a dimension that is a constant or a function of named dimensions."""

    def __init__(self, fn, const: int | None = None, text: str = "?") -> None:
        self.fn, self.const, self.text = fn, const, text

    @classmethod
    def sym(cls, name: str) -> "Expr":
        return cls(lambda env: env[name], None, name)

    @classmethod
    def constant(cls, value: int) -> "Expr":
        return cls(lambda env: value, int(value), str(value))

    def is_constant(self) -> bool:
        return self.const is not None

    def get_constant_value(self) -> int:
        return self.const

    def eval(self, **env: int) -> int:
        return int(self.fn(env))

    def __repr__(self) -> str:
        return f"Expr({self.text})"


class DimensionOperation(enum.Enum):
    SUM = 0
    PROD = 1
    MAX = 2
    MIN = 3
    SUB = 4
    EQUAL = 5
    LESS = 6
    FLOOR_DIV = 7
    CEIL_DIV = 8


_OPS = {DimensionOperation.SUM: lambda a, b: a + b, DimensionOperation.PROD: lambda a, b: a * b,
        DimensionOperation.MAX: max, DimensionOperation.MIN: min, DimensionOperation.SUB: lambda a, b: a - b,
        DimensionOperation.EQUAL: lambda a, b: int(a == b), DimensionOperation.LESS: lambda a, b: int(a < b),
        DimensionOperation.FLOOR_DIV: lambda a, b: a // b, DimensionOperation.CEIL_DIV: lambda a, b: -(-a // b)}


class ExprBuilder:
    """trt.IExprBuilder: constants and binary operations on dimension expressions."""

    def constant(self, value: int) -> Expr:
        return Expr.constant(value)

    def operation(self, op: DimensionOperation, a: Expr, b: Expr) -> Expr:
        f = _OPS[op]
        const = f(a.const, b.const) if a.is_constant() and b.is_constant() else None
        return Expr(lambda env: f(a.fn(env), b.fn(env)), const, f"{op.name}({a.text}, {b.text})")


class DataType(enum.Enum):
    FLOAT = 0
    HALF = 1
    INT8 = 2
    INT32 = 3
    BOOL = 4
    UINT8 = 5
    FP8 = 6
    BF16 = 7
    INT64 = 8
    INT4 = 9
    FP4 = 10


class TensorFormat(enum.Enum):
    LINEAR = 0
    CHW2 = 1
    HWC8 = 2
    CHW4 = 3
    CHW16 = 4
    CHW32 = 5


class PluginFieldType(enum.Enum):
    FLOAT16 = 0
    FLOAT32 = 1
    FLOAT64 = 2
    INT8 = 3
    INT16 = 4
    INT32 = 5
    CHAR = 6
    DIMS = 7
    UNKNOWN = 8
    BF16 = 9
    INT64 = 10
    FP8 = 11
    INT4 = 12
    FP4 = 13


QuickPluginCreationRequest = enum.Enum("QuickPluginCreationRequest",
                                       "UNKNOWN PREFER_JIT PREFER_AOT STRICT_JIT STRICT_AOT")
TensorRTPhase = enum.Enum("TensorRTPhase", "BUILD RUNTIME")
PluginArgType = enum.Enum("PluginArgType", "INT")
PluginArgDataType = enum.Enum("PluginArgDataType", "INT8 INT16 INT32")


class Dims(list):
    MAX_DIMS = 8

    def __init__(self, shape=()):
        super().__init__([0] * shape if isinstance(shape, int) else list(shape))


class DimsExprs(list):
    def __init__(self, n: int) -> None:
        super().__init__([None] * n)


class PluginTensorDesc:
    def __init__(self, dims=(), type=DataType.FLOAT, format=TensorFormat.LINEAR, scale=1.0) -> None:
        self.dims, self.type, self.format, self.scale = Dims(dims), type, format, scale


class DynamicPluginTensorDesc:
    def __init__(self, desc: PluginTensorDesc, min=(), opt=(), max=()) -> None:
        self.desc, self.min, self.opt, self.max = desc, Dims(min), Dims(opt), Dims(max)


class PluginField:
    def __init__(self, name: str = "", data=None, type=PluginFieldType.UNKNOWN) -> None:
        self.name, self.data, self.type = name, data, type


class PluginFieldCollection(list):
    pass


class LaunchParams:
    """What TensorRT hands `get_launch_params` to fill: grid, block, shared memory."""

    grid_x = grid_y = grid_z = block_x = block_y = block_z = shared_mem = None


class SymExprSetter:
    """What TensorRT hands `get_launch_params` for the extra kernel arguments."""

    def __init__(self) -> None:
        self.nbSymExprs = 0
        self.exprs: dict[int, object] = {}

    def __setitem__(self, i: int, value) -> None:
        self.exprs[i] = value


class _Interface:
    """Base of TensorRT's pybind11 plugin interfaces: nothing to initialise here."""

    def __init__(self, *args, **kwargs) -> None:
        pass


class Logger:
    INTERNAL_ERROR, ERROR, WARNING, INFO, VERBOSE = range(5)

    def __init__(self, *args) -> None:
        self.messages: list[tuple[int, str]] = []

    def log(self, severity: int, message: str) -> None:
        self.messages.append((severity, message))


class PluginRegistry:
    def __init__(self) -> None:
        self.creators: dict[tuple[str, str, str], object] = {}

    def register_creator(self, creator, namespace: str) -> bool:
        self.creators[(creator.name, creator.plugin_version, namespace)] = creator
        return True

    def get_creator(self, name: str, version: str, namespace: str = ""):
        return self.creators.get((name, version, namespace))


def make_core() -> types.ModuleType:
    """A fresh stand-in `tensorrt` module (the compiled core's names only)."""
    trt = types.ModuleType("tensorrt")
    trt.__version__ = TENSORRT_VERSION
    for enum_type in (DataType, TensorFormat, PluginFieldType, DimensionOperation, QuickPluginCreationRequest,
                      TensorRTPhase, PluginArgType, PluginArgDataType):
        setattr(trt, enum_type.__name__, enum_type)
    trt.float32, trt.float16, trt.bfloat16, trt.int8, trt.int32, trt.int64, trt.bool, trt.uint8 = (
        DataType.FLOAT, DataType.HALF, DataType.BF16, DataType.INT8, DataType.INT32, DataType.INT64, DataType.BOOL,
        DataType.UINT8)
    trt.fp8 = DataType.FP8
    trt.IDimensionExpr, trt.IExprBuilder = Expr, ExprBuilder
    trt.Dims, trt.DimsExprs = Dims, DimsExprs
    trt.PluginTensorDesc, trt.DynamicPluginTensorDesc = PluginTensorDesc, DynamicPluginTensorDesc
    trt.PluginField, trt.PluginFieldCollection = PluginField, PluginFieldCollection
    trt.Logger = Logger
    for name in ("IPluginV3", "IPluginV3QuickCore", "IPluginV3QuickBuild", "IPluginV3QuickRuntime",
                 "IPluginV3QuickAOTBuild", "IPluginCreatorV3Quick", "ISymExpr", "ITensor", "IPluginCapability"):
        setattr(trt, name, type(name, (_Interface,), {}))
    registry = PluginRegistry()
    trt.get_plugin_registry = lambda: registry
    nptypes = {DataType.FLOAT: np.float32, DataType.HALF: np.float16, DataType.INT8: np.int8,
               DataType.INT32: np.int32, DataType.INT64: np.int64, DataType.BOOL: np.bool_, DataType.UINT8: np.uint8}
    trt.nptype = lambda t: nptypes[t]
    return trt


def plugin_layer_dir() -> Path | None:
    """The wheel's pure-Python plugin package (`tensorrt_bindings/plugin`), without importing the compiled core."""
    spec = importlib.util.find_spec("tensorrt_bindings")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "plugin"
    return path if (path / "__init__.py").is_file() else None


@contextlib.contextmanager
def plugin_layer() -> Iterator[tuple[types.ModuleType, types.ModuleType]]:
    """Within the block, the stand-in core is `tensorrt` and NVIDIA's plugin package is `tensorrt.plugin` (with its
    submodules); yields (trt, trtp). Any `tensorrt*` modules there before are put back afterwards."""
    directory = plugin_layer_dir()
    saved = {name: mod for name, mod in sys.modules.items() if name == "tensorrt" or name.startswith("tensorrt.")}
    for name in saved:
        del sys.modules[name]
    try:
        trt = make_core()
        sys.modules["tensorrt"] = trt
        spec = importlib.util.spec_from_file_location("tensorrt.plugin", directory / "__init__.py",
                                                      submodule_search_locations=[str(directory)])
        trtp = importlib.util.module_from_spec(spec)
        sys.modules["tensorrt.plugin"] = trt.plugin = trtp
        spec.loader.exec_module(trtp)  # imports its submodules (_lib, _validate, _tensor, ...) as tensorrt.plugin.*
        yield trt, trtp
    finally:
        for name in [m for m in sys.modules if m == "tensorrt" or m.startswith("tensorrt.")]:
            del sys.modules[name]
        sys.modules.update(saved)
