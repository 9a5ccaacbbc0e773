"""One thin layer over the two TensorRT flavours, with their differences made explicit.

- datacenter TensorRT (`import tensorrt`, 10.x and 11.x): builds for the GPU it runs on; NVIDIA's plugin
  library via `init_libnvinfer_plugins`; TensorRT 10 still has weak typing (`BuilderFlag.FP16`), TensorRT 11
  is strongly typed only (its STRONGLY_TYPED creation flag is accepted and ignored).
- TensorRT-RTX (`tensorrt_rtx`, or `tensorrt_rtx_bindings` from the `tensorrt-rtx-cu13-bindings` wheel):
  strongly typed only, no NVIDIA plugin library, ahead-of-time builds for a compute capability set on the
  builder config (works with no GPU; kernels are compiled on the target GPU at run time), timing cache no-op.
"""
from __future__ import annotations

import ctypes
import importlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from vita_deploy.engines.errors import BuildInputError, EngineBuildError, PrecisionError, TensorRTNotInstalledError

log = logging.getLogger("vita_deploy.engines")

MODULES = ("tensorrt", "tensorrt_rtx", "tensorrt_rtx_bindings")  # preference order
INSTALL_HINT = ("install datacenter TensorRT (`pip install tensorrt`, NVIDIA GPUs such as A100/H100/L4) or "
                "TensorRT-RTX (`pip install tensorrt-rtx-cu13-libs tensorrt-rtx-cu13-bindings`, RTX GPUs and "
                "ahead-of-time builds on machines without a GPU)")
DEFAULT_AOT_TARGET = "89"  # TensorRT-RTX target on a machine without a GPU


def import_tensorrt(module: str | None = None) -> ModuleType:
    """The first importable TensorRT module (or `module`, or $VITA_TENSORRT_MODULE) that has the builder API."""
    chosen = module or os.environ.get("VITA_TENSORRT_MODULE")
    names = [chosen] if chosen else list(MODULES)
    failures = []
    for name in names:
        try:
            mod = importlib.import_module(name)
        except Exception as e:  # the PyPI `tensorrt` sdist stub and broken CUDA libraries raise all sorts
            failures.append(f"{name}: {type(e).__name__}: {e}".splitlines()[0])
            continue
        if hasattr(mod, "Builder") and hasattr(mod, "OnnxParser"):
            return mod
        failures.append(f"{name}: has no Builder/OnnxParser (a stub package)")
    raise TensorRTNotInstalledError(f"no usable TensorRT Python module ({'; '.join(failures)}): {INSTALL_HINT}")


def visible_gpu_compute_capability() -> str | None:
    """Compute capability of CUDA device 0 as "90", "89", ..., or None when no GPU/driver is visible."""
    try:
        cuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return None
    count, device, major, minor = ctypes.c_int(0), ctypes.c_int(0), ctypes.c_int(0), ctypes.c_int(0)
    if cuda.cuInit(0) != 0 or cuda.cuDeviceGetCount(ctypes.byref(count)) != 0 or count.value < 1:
        return None
    if cuda.cuDeviceGet(ctypes.byref(device), 0) != 0:
        return None
    cuda.cuDeviceGetAttribute(ctypes.byref(major), 75, device)  # CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR
    cuda.cuDeviceGetAttribute(ctypes.byref(minor), 76, device)  # ..._MINOR
    return f"{major.value}{minor.value}"


def normalize_compute_capability(spec: str) -> str:
    """"89", "8.9", "sm89", "SM_89" -> "89"."""
    text = spec.strip().lower().removeprefix("sm").lstrip("_").replace(".", "")
    if not text.isdigit() or len(text) not in (2, 3):
        raise BuildInputError(f"--computeCapability {spec!r}: give it as major and minor digits, e.g. 89 or 8.9")
    return text


class TensorRTLogger:
    """Factory for an `ILogger` that forwards TensorRT messages to Python logging and keeps the errors."""

    @staticmethod
    def create(trt: ModuleType, verbose: bool):
        levels = {trt.ILogger.Severity.INTERNAL_ERROR: logging.CRITICAL, trt.ILogger.Severity.ERROR: logging.ERROR,
                  trt.ILogger.Severity.WARNING: logging.WARNING, trt.ILogger.Severity.INFO: logging.INFO,
                  trt.ILogger.Severity.VERBOSE: logging.DEBUG}
        lowest = trt.ILogger.Severity.VERBOSE if verbose else trt.ILogger.Severity.WARNING

        class _Logger(trt.ILogger):
            def __init__(self) -> None:
                trt.ILogger.__init__(self)
                self.errors: list[str] = []

            def log(self, severity, msg: str) -> None:
                if int(severity) <= int(trt.ILogger.Severity.ERROR):
                    self.errors.append(msg)
                if int(severity) <= int(lowest):
                    log.log(levels.get(severity, logging.INFO), "[TRT] %s", msg)

        return _Logger()


@dataclass
class Backend:
    """The imported TensorRT module plus what this flavour and version can do."""

    trt: ModuleType

    @property
    def flavour(self) -> str:
        return "tensorrt-rtx" if self.trt.__name__.startswith("tensorrt_rtx") else "tensorrt"

    @property
    def version(self) -> str:
        return self.trt.__version__

    @property
    def major(self) -> int:
        return int(self.version.split(".")[0])

    @property
    def is_rtx(self) -> bool:
        return self.flavour == "tensorrt-rtx"

    @property
    def strongly_typed_only(self) -> bool:
        """TensorRT 11 and TensorRT-RTX removed weak typing: no FP16 builder flag."""
        return self.is_rtx or self.major >= 11 or not hasattr(self.trt.BuilderFlag, "FP16")

    @property
    def ships_nvidia_plugins(self) -> bool:
        return not self.is_rtx and hasattr(self.trt, "init_libnvinfer_plugins")

    def describe(self) -> str:
        return f"{self.flavour} {self.version} (module {self.trt.__name__})"

    # --- builder and plugins -------------------------------------------------------------------------------
    def create_builder(self, verbose: bool = False):
        """(builder, logger). NVIDIA's plugins are registered first where the flavour has them."""
        logger = TensorRTLogger.create(self.trt, verbose)
        if hasattr(self.trt, "init_libnvinfer_plugins"):
            self.trt.init_libnvinfer_plugins(logger, "")
        builder = self.trt.Builder(logger)
        if builder is None:
            raise EngineBuildError(f"{self.describe()} could not create a builder: {' '.join(logger.errors)}")
        return builder, logger

    def load_plugin_libraries(self, libraries: list[str]) -> list[str]:
        """Load plugin .so files into the plugin registry (`IPluginRegistry.load_library`); returns their paths."""
        loaded = []
        for lib in libraries:
            path = Path(lib)
            if not path.is_file():
                raise BuildInputError(f"--plugins {lib}: no such file")
            registry = self.trt.get_plugin_registry()
            if not hasattr(registry, "load_library"):
                raise EngineBuildError(f"{self.describe()} cannot load plugin libraries (no "
                                       "IPluginRegistry.load_library); link the plugin into the application instead")
            if registry.load_library(str(path.resolve())) is None:
                raise EngineBuildError(f"{self.describe()} failed to load plugin library {lib} (wrong TensorRT "
                                       "version or missing dependencies; run with --verbose)")
            log.info("loaded plugin library %s", path)
            loaded.append(str(path))
        return loaded

    def network_flags(self, fp16_flag: bool) -> tuple[int, list[str]]:
        """Creation flags: explicit batch is the only mode since TensorRT 10 (no flag needed). Strongly typed
        unless TensorRT 10's weak-typed FP16 flag is asked for; TensorRT 11 accepts and ignores the flag."""
        flags, names = 0, []
        creation = self.trt.NetworkDefinitionCreationFlag
        if not fp16_flag and hasattr(creation, "STRONGLY_TYPED"):
            flags |= 1 << int(creation.STRONGLY_TYPED)
            names.append("STRONGLY_TYPED")
        return flags, names

    # --- builder-config differences -----------------------------------------------------------------------
    def enable_fp16(self, config) -> None:
        if self.strongly_typed_only:
            raise PrecisionError(
                f"--fp16 is not available on {self.describe()}: it builds strongly typed networks only (the FP16 "
                "builder flag was removed in TensorRT 11 and never existed in TensorRT-RTX). Export an fp16 graph "
                "(`vita-deploy export --precision fp16`) and build it without --fp16.")
        config.set_flag(self.trt.BuilderFlag.FP16)

    def set_targets(self, config, compute_capabilities: list[str]) -> tuple[str, list[str] | None]:
        """Apply the build target; returns (description for the sidecar, compute capabilities or None)."""
        gpu = visible_gpu_compute_capability()
        can_target = hasattr(config, "set_compute_capability") and hasattr(self.trt, "ComputeCapability")
        if not self.is_rtx and not (compute_capabilities and can_target):
            if compute_capabilities:
                raise BuildInputError(f"--computeCapability is for TensorRT-RTX ahead-of-time builds; "
                                      f"{self.describe()} builds for the GPU it runs on")
            if gpu is None:
                raise EngineBuildError(f"{self.describe()} needs a CUDA GPU to build engines and none is visible "
                                       "(for a build check without a GPU, use TensorRT-RTX)")
            return f"this GPU (SM{gpu})", None
        ccs = [normalize_compute_capability(c) for c in compute_capabilities]
        kind = "ahead of time"
        if not ccs:
            ccs, kind = [gpu or DEFAULT_AOT_TARGET], "this GPU" if gpu else "ahead of time, default: no GPU visible"
            log.info("%s target: SM%s (%s)", self.flavour, ccs[0], kind)
        supported = [n[2:] for n in self.trt.ComputeCapability.__members__ if n.startswith("SM")]
        unsupported = [c for c in ccs if c not in supported]
        if unsupported:
            raise BuildInputError(f"{self.describe()} cannot target compute capability {', '.join(unsupported)}"
                                  f"{' (the visible GPU)' if unsupported == [gpu] else ''}; it supports "
                                  f"{', '.join(supported)}: pass --computeCapability with one of them")
        config.num_compute_capabilities = len(ccs)
        for i, cc in enumerate(ccs):
            config.set_compute_capability(getattr(self.trt.ComputeCapability, f"SM{cc}"), i)
        return f"{', '.join('SM' + c for c in ccs)} ({kind})", ccs

    @property
    def timing_cache_supported(self) -> bool:
        return not self.is_rtx  # TensorRT-RTX: "Timing cache operations are no-ops"

    def memory_pool(self, name: str):
        pools = {"workspace": "WORKSPACE", "tacticSharedMem": "TACTIC_SHARED_MEMORY", "dlaSRAM": "DLA_MANAGED_SRAM",
                 "dlaLocalDRAM": "DLA_LOCAL_DRAM", "dlaGlobalDRAM": "DLA_GLOBAL_DRAM"}
        pool = getattr(self.trt.MemoryPoolType, pools[name], None)
        if pool is None:
            raise BuildInputError(f"--memPoolSize {name}: {self.describe()} has no such memory pool")
        return pool


def load_backend(module: str | None = None) -> Backend:
    """The TensorRT backend to build with: `tensorrt` if importable, else TensorRT-RTX."""
    return Backend(import_tensorrt(module))
