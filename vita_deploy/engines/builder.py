"""Build TensorRT engines from ONNX: a chain of small functions, ONNX -> network -> config -> bytes -> file.

One thin backend layer covers datacenter TensorRT (`import tensorrt`, 10.x and 11.x) and TensorRT-RTX
(`tensorrt_rtx` / `tensorrt_rtx_bindings`), with their differences handled explicitly:
- precision: TensorRT 10 has BuilderFlag.FP16; TensorRT 11 and RTX are strongly typed only (fp16 comes from
  the fp16 ONNX), so `fp16=True` is refused there with that advice;
- plugins: NVIDIA's plugin library (`init_libnvinfer_plugins`) exists in datacenter TensorRT only; RTX cannot
  build graphs with plugin nodes (export with --deform-attn native);
- targets: RTX builds ahead of time for a compute capability (default SM89 on a machine without a GPU).
Every engine gets a JSON sidecar (flavour, version, target, profiles, precision, ONNX hash, build time).
"""
from __future__ import annotations

import json
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from vita_deploy.modeling.checkpoint import atomic_write, file_sha256
from vita_deploy.runtime.tensorrt_engine import import_tensorrt


class EngineBuildError(RuntimeError):
    """The engine could not be built; the message names the cause and the fix."""


@dataclass
class BuildOptions:
    """trtexec-like options. Shapes: {input name: dims} per profile point."""

    min_shapes: dict[str, list[int]] = field(default_factory=dict)
    opt_shapes: dict[str, list[int]] = field(default_factory=dict)
    max_shapes: dict[str, list[int]] = field(default_factory=dict)
    fp16: bool = False
    workspace_mib: int | None = None
    timing_cache: str | None = None
    optimization_level: int | None = None
    compute_capability: str | None = None  # e.g. "89"; RTX ahead-of-time target
    plugins: list[str] = field(default_factory=list)
    verbose: bool = False


def flavour(trt) -> str:
    name = trt.__name__
    if name.startswith("tensorrt_rtx"):
        return "tensorrt-rtx"
    return "tensorrt"


def strongly_typed_only(trt) -> bool:
    """TensorRT 11 and TensorRT-RTX have no weak typing (no FP16 builder flag)."""
    return flavour(trt) == "tensorrt-rtx" or int(trt.__version__.split(".")[0]) >= 11 or \
        not hasattr(trt.BuilderFlag, "FP16")


def parse_shapes(spec: str) -> dict[str, list[int]]:
    """trtexec syntax `name:1x3x224x224,other:4x5` -> {name: [1, 3, 224, 224], other: [4, 5]}."""
    shapes: dict[str, list[int]] = {}
    if not spec:
        return shapes
    for item in spec.split(","):
        name, sep, dims = item.rpartition(":")
        try:
            if not sep or not name:
                raise ValueError
            shapes[name.strip("'\"")] = [int(d) for d in dims.split("x")]
        except ValueError:
            raise EngineBuildError(f"malformed shape spec {item!r}: use name:AxBxC (e.g. images:1x3x384x640)") from None
    return shapes


def create_builder(trt, verbose: bool = False):
    logger = trt.Logger(trt.Logger.VERBOSE if verbose else trt.Logger.WARNING)
    if hasattr(trt, "init_libnvinfer_plugins"):
        trt.init_libnvinfer_plugins(logger, "")
    return trt.Builder(logger), logger


def parse_onnx(trt, builder, logger, onnx_path: Path, fp16_flag: bool):
    """ONNX -> (network, parser). Parser errors are reported with their node and op."""
    # Strongly typed unless the weakly typed FP16 flag is asked for (TensorRT 10); TensorRT 11 and RTX are
    # strongly typed anyway.
    flags = 0
    if not fp16_flag and hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"):
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    ok = parser.parse_from_file(str(onnx_path))
    if not ok:
        messages = []
        for i in range(parser.num_errors):
            err = parser.get_error(i)
            node = f" at node {err.node_name()!r} ({err.node_operator()})" if hasattr(err, "node_name") else ""
            messages.append(f"{err.desc()}{node}")
        text = "\n  ".join(messages)
        hint = ""
        if "MultiscaleDeformableAttnPlugin_TRT" in text or "plugin" in text.lower():
            hint = ("\nThe graph uses NVIDIA's MultiscaleDeformableAttnPlugin_TRT, which this TensorRT does not "
                    "provide (TensorRT-RTX ships no plugin library; datacenter TensorRT needs >= 10.11): export with "
                    "`--deform-attn native`, or build with datacenter TensorRT.")
        raise EngineBuildError(f"TensorRT could not parse {onnx_path}:\n  {text}{hint}")
    return network, parser


def network_io(network) -> list[dict]:
    io = []
    for i in range(network.num_inputs):
        t = network.get_input(i)
        io.append({"name": t.name, "mode": "input", "shape": list(t.shape), "dtype": str(t.dtype)})
    for i in range(network.num_outputs):
        t = network.get_output(i)
        io.append({"name": t.name, "mode": "output", "shape": list(t.shape), "dtype": str(t.dtype)})
    return io


def create_config(trt, builder, network, options: BuildOptions):
    config = builder.create_builder_config()
    if options.fp16:
        if strongly_typed_only(trt):
            raise EngineBuildError(f"--fp16 is not supported by {flavour(trt)} {trt.__version__}: it builds strongly "
                                   "typed networks only. Export an fp16 graph (`python export/to_onnx.py "
                                   "--precision fp16`) and build it without --fp16.")
        config.set_flag(trt.BuilderFlag.FP16)
    if options.workspace_mib:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, options.workspace_mib << 20)
    if options.optimization_level is not None and hasattr(config, "builder_optimization_level"):
        config.builder_optimization_level = options.optimization_level
    if flavour(trt) == "tensorrt-rtx":
        cc = options.compute_capability or "89"
        target = getattr(trt.ComputeCapability, f"SM{cc}", None)
        if target is None:
            raise EngineBuildError(f"TensorRT-RTX cannot target compute capability {cc}; choose one of "
                                   f"{[n for n in dir(trt.ComputeCapability) if n.startswith('SM')]}")
        config.num_compute_capabilities = 1
        config.set_compute_capability(target, 0)
    inputs = [network.get_input(i) for i in range(network.num_inputs)]
    names = {t.name for t in inputs}
    for spec in (options.min_shapes, options.opt_shapes, options.max_shapes):
        unknown = set(spec) - names
        if unknown:
            raise EngineBuildError(f"shape given for unknown input(s) {sorted(unknown)}; the network's inputs are "
                                   f"{sorted(names)}")
    dynamic = [t for t in inputs if any(d < 0 for d in t.shape)]
    if dynamic:
        profile = builder.create_optimization_profile()
        for t in dynamic:
            if t.name not in options.min_shapes or t.name not in options.max_shapes:
                raise EngineBuildError(f"input {t.name!r} has dynamic shape {list(t.shape)}: give --minShapes, "
                                       "--optShapes and --maxShapes for it (or build with --manifest)")
            mn, mx = options.min_shapes[t.name], options.max_shapes[t.name]
            profile.set_shape(t.name, mn, options.opt_shapes.get(t.name, mx), mx)
        config.add_optimization_profile(profile)
    if options.timing_cache:
        path = Path(options.timing_cache)
        cache = config.create_timing_cache(path.read_bytes() if path.is_file() else b"")
        config.set_timing_cache(cache, ignore_mismatch=False)
    return config


def build_engine(onnx_path: str | Path, engine_path: str | Path, options: BuildOptions | None = None,
                 extra_metadata: dict | None = None) -> dict:
    """ONNX file -> serialized engine + sidecar JSON (both written atomically); returns the sidecar dict."""
    options = options or BuildOptions()
    onnx_path, engine_path = Path(onnx_path), Path(engine_path)
    if not onnx_path.is_file():
        raise EngineBuildError(f"{onnx_path} does not exist: export it with `python export/to_onnx.py`")
    try:
        trt = import_tensorrt()
    except ImportError as e:
        raise EngineBuildError(str(e)) from None
    builder, logger = create_builder(trt, options.verbose)
    for lib in options.plugins:
        registry = trt.get_plugin_registry()
        if not hasattr(registry, "load_library"):
            raise EngineBuildError(f"{flavour(trt)} cannot load plugin libraries ({lib})")
        registry.load_library(lib)
    network, _parser = parse_onnx(trt, builder, logger, onnx_path, options.fp16)
    io = network_io(network)
    config = create_config(trt, builder, network, options)
    start = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    build_s = time.perf_counter() - start
    if serialized is None:
        raise EngineBuildError(f"TensorRT failed to build {onnx_path} (see the TensorRT log above; run with "
                               "--verbose for details)")
    data = bytes(serialized)
    atomic_write(engine_path, lambda tmp: Path(tmp).write_bytes(data))
    if options.timing_cache and hasattr(config, "get_timing_cache"):
        cache = config.get_timing_cache()
        if cache is not None:
            atomic_write(options.timing_cache, lambda tmp: Path(tmp).write_bytes(bytes(cache.serialize())))
    sidecar = {
        "tensorrt_flavour": flavour(trt), "tensorrt_version": trt.__version__,
        "target": (f"SM{options.compute_capability or '89'} (ahead of time)" if flavour(trt) == "tensorrt-rtx"
                   else "the GPU it was built on"),
        "onnx": str(onnx_path), "onnx_sha256": file_sha256(onnx_path), "engine_bytes": len(data),
        "build_s": round(build_s, 3), "io": io,
        "profiles": {"min": options.min_shapes, "opt": options.opt_shapes, "max": options.max_shapes},
        "precision": "fp16 (builder flag)" if options.fp16 else "as typed in the ONNX",
        "options": asdict(options), "host": platform.node(), "built_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
        **(extra_metadata or {}),
    }
    sidecar_path = engine_path.with_suffix(engine_path.suffix + ".json")
    atomic_write(sidecar_path, lambda tmp: Path(tmp).write_text(json.dumps(sidecar, indent=2)))
    return sidecar


def build_from_manifest(manifest_path: str | Path, out_dir: str | Path | None = None,
                        options: BuildOptions | None = None) -> dict[str, dict]:
    """Build every graph of an export with the shape profiles its manifest declares."""
    from vita_deploy.export.onnx_export import load_manifest

    manifest_path = Path(manifest_path)
    export_dir = manifest_path.parent
    manifest = load_manifest(export_dir)
    out_dir = Path(out_dir) if out_dir else export_dir
    base = options or BuildOptions()
    results = {}
    for graph, info in manifest["graphs"].items():
        profiles = info["profiles"]
        graph_options = BuildOptions(**{**asdict(base),
                                        "min_shapes": {k: v["min"] for k, v in profiles.items()},
                                        "opt_shapes": {k: v["opt"] for k, v in profiles.items()},
                                        "max_shapes": {k: v["max"] for k, v in profiles.items()}})
        engine = out_dir / (Path(info["file"]).stem + ".engine")
        results[graph] = build_engine(export_dir / info["file"], engine, graph_options,
                                      {"graph": graph, "export_precision": manifest["precision"],
                                       "deform_attn": manifest["deform_attn"]})
    return results
