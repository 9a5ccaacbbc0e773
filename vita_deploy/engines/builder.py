"""Build a TensorRT engine from ONNX as a chain of small functions:
ONNX -> network (`parse_network`) -> config (`create_config`) -> serialized bytes (`serialize`) -> files
(`write_engine`: the engine and its JSON sidecar, both atomically). `build_engine` runs the chain.

Works on datacenter TensorRT 10/11 and on TensorRT-RTX through `backend.Backend`; raises `EngineBuildError`
subclasses with the cause and the fix, never exits.
"""
from __future__ import annotations

import json
import logging
import os
import platform
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from vita_deploy.engines.backend import Backend, load_backend
from vita_deploy.engines.errors import (BuildInputError, EngineBuildError, OnnxParseError, ParserMessage,
                                        PluginMissingError)
from vita_deploy.engines.shapes import ShapeRange, resolve_profile
from vita_deploy.engines.vita_plugin import register as register_vita_plugin, supports_aot_plugins, uses_vita_plugin
from vita_deploy.export.plugin import PLUGIN_OPS, VITA_PLUGIN
from vita_deploy.files import atomic_write, file_sha256

log = logging.getLogger("vita_deploy.engines")
SIDECAR_FORMAT, SIDECAR_VERSION = "vita-deploy-engine", 1
MSDA_PLUGIN = "MultiscaleDeformableAttnPlugin_TRT"


@dataclass(frozen=True)
class BuildOptions:
    """trtexec-like options. `shapes`: {input name or one-'*' pattern: ShapeRange} (see shapes.py)."""

    shapes: dict[str, ShapeRange] = field(default_factory=dict)
    fp16: bool = False  # TensorRT 10 weak-typed FP16 flag; refused by strongly typed builders
    memory_pools: dict[str, int] = field(default_factory=dict)  # {"workspace": bytes, ...}
    timing_cache_file: str | None = None
    optimization_level: int | None = None  # 0..5, TensorRT's default is 3
    compute_capabilities: tuple[str, ...] = ()  # TensorRT-RTX ahead-of-time targets, e.g. ("89",)
    plugins: tuple[str, ...] = ()  # plugin libraries (.so) to load into the registry
    verbose: bool = False


def sidecar_path(engine_path: str | Path) -> Path:
    """`x.engine` -> `x.engine.json`."""
    engine_path = Path(engine_path)
    return engine_path.with_name(engine_path.name + ".json")


# --- ONNX -> network ----------------------------------------------------------------------------------------
def _parser_messages(parser, onnx_path: Path) -> list[ParserMessage]:
    messages = []
    for i in range(parser.num_errors):
        err = parser.get_error(i)
        get = lambda attr, default: getattr(err, attr)() if hasattr(err, attr) else default  # noqa: E731
        messages.append(ParserMessage(desc=str(get("desc", err)), node_name=str(get("node_name", "")),
                                      op_type=str(get("node_operator", "")), node_index=int(get("node", -1)),
                                      code=str(get("code", "")).rpartition(".")[2]))
    if any(m.node_index >= 0 and not (m.node_name and m.op_type) for m in messages):
        messages = _fill_node_names(messages, onnx_path)
    return messages


def _fill_node_names(messages: list[ParserMessage], onnx_path: Path) -> list[ParserMessage]:
    """Older parsers give only the node index: look the name and op up in the ONNX graph."""
    try:
        import onnx
        nodes = onnx.load(str(onnx_path), load_external_data=False).graph.node
    except Exception:  # the parse already failed; the index-only message is still useful
        return messages
    out = []
    for m in messages:
        if 0 <= m.node_index < len(nodes):
            node = nodes[m.node_index]
            m = ParserMessage(m.desc, m.node_name or node.name, m.op_type or node.op_type, m.node_index, m.code)
        out.append(m)
    return out


def _plugin_hint(backend: Backend, op_type: str) -> str:
    if op_type == VITA_PLUGIN.op_type:
        supported, why = supports_aot_plugins(backend.trt)
        return (f"{why}: re-export with `vita-deploy export --deform-attn native`." if not supported else
                "our plugin was registered, yet the parser did not find it: check the node's plugin_namespace "
                "(vita_deploy) and that triton is installed (`pip install -e '.[gpu]'`).")
    if op_type == MSDA_PLUGIN and backend.is_rtx:
        return ("TensorRT-RTX does not ship NVIDIA's plugin library, so it cannot build this node: export with "
                "`vita-deploy export --deform-attn native` (standard ONNX operators only) and build that.")
    if op_type == MSDA_PLUGIN:
        return (f"{backend.describe()} has no {MSDA_PLUGIN} creator for this node's plugin_version (version 2, "
                "IPluginV3, needs TensorRT >= 10.11 with libnvinfer_plugin): upgrade TensorRT, or export with "
                "`--deform-attn native`.")
    return (f"no plugin creator for op {op_type!r} is registered in {backend.describe()}: load the library that "
            "implements it with --plugins LIB.so, or export the graph without this op.")


def raise_parse_error(backend: Backend, onnx_path: Path, messages: list[ParserMessage]) -> None:
    """Turn parser errors into PluginMissingError (a node with no plugin creator) or OnnxParseError."""
    text = "\n  ".join(str(m) for m in messages) or "(the parser gave no message; run with --verbose)"
    for m in messages:
        if "plugin not found" in m.desc.lower() or m.op_type.endswith("_TRT") or m.op_type in PLUGIN_OPS:
            raise PluginMissingError(f"{onnx_path}: node {m.node_name!r} (op {m.op_type}) needs a TensorRT plugin "
                                     f"that is not available. {_plugin_hint(backend, m.op_type)}\nParser:\n  {text}",
                                     messages, m.node_name, m.op_type)
    raise OnnxParseError(f"TensorRT ({backend.describe()}) could not parse {onnx_path}:\n  {text}", messages)


def parse_network(backend: Backend, builder, logger, onnx_path: Path, fp16: bool = False):
    """ONNX file -> (network, parser, network flag names). External data is read relative to the file."""
    flags, flag_names = backend.network_flags(fp16)
    network = builder.create_network(flags)
    parser = backend.trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        raise_parse_error(backend, onnx_path, _parser_messages(parser, onnx_path))
    return network, parser, flag_names


def dtype_name(dtype) -> str:
    """TensorRT DataType -> "fp32", "fp16", "int32", ..."""
    names = {"FLOAT": "fp32", "HALF": "fp16", "BF16": "bf16", "INT8": "int8", "INT32": "int32", "INT64": "int64",
             "BOOL": "bool", "UINT8": "uint8", "FP8": "fp8"}
    return names.get(dtype.name, dtype.name.lower())


def network_io(network) -> list[dict]:
    """[{name, mode, shape (-1 = dynamic), dtype}] of the network's inputs then outputs."""
    io = []
    for mode, count, get in (("input", network.num_inputs, network.get_input),
                             ("output", network.num_outputs, network.get_output)):
        for i in range(count):
            t = get(i)
            io.append({"name": t.name, "mode": mode, "shape": list(t.shape), "dtype": dtype_name(t.dtype)})
    return io


def network_precision(backend: Backend, network, fp16_flag: bool) -> str:
    """What the engine computes in: the FP16 flag (weak typing), or the types the layers declare: float types,
    and int8 / fp8 where Quantize layers (an explicitly quantized Q/DQ graph) produce them."""
    if fp16_flag:
        return "fp32+fp16 (weakly typed, FP16 builder flag)"
    seen = set()
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        for j in range(layer.num_outputs):
            name = dtype_name(layer.get_output(j).dtype)
            if name in ("fp32", "fp16", "bf16", "int8", "fp8"):
                seen.add(name)
    quantized = sorted(seen & {"int8", "fp8"})
    floats = seen - {"int8", "fp8"}
    low = sorted(floats - {"fp32"})
    text = f"{'+'.join(low)}{' with fp32 islands' if 'fp32' in floats else ''}" if low else "fp32"
    if quantized:
        text = f"{'+'.join(quantized)} Q/DQ (explicit quantization), {text}"
    return f"{text} (strongly typed)"


# --- network -> config --------------------------------------------------------------------------------------
def create_config(backend: Backend, builder, network, options: BuildOptions):
    """Builder config: precision flag, memory pools, optimisation level, target, profile, timing cache.
    Returns (config, summary) where summary is what the sidecar records."""
    trt = backend.trt
    config = builder.create_builder_config()
    if options.fp16:
        backend.enable_fp16(config)
    for pool, size in options.memory_pools.items():
        config.set_memory_pool_limit(backend.memory_pool(pool), size)
    if options.optimization_level is not None:
        if not 0 <= options.optimization_level <= 5:
            raise BuildInputError(f"--builderOptimizationLevel {options.optimization_level}: use 0..5 (default 3)")
        config.builder_optimization_level = options.optimization_level
    target, ccs = backend.set_targets(config, list(options.compute_capabilities))

    inputs = [network.get_input(i) for i in range(network.num_inputs)]
    profile = resolve_profile({t.name: tuple(t.shape) for t in inputs}, options.shapes,
                              frozenset(t.name for t in inputs if t.is_shape_tensor))
    if profile:
        trt_profile = builder.create_optimization_profile()
        shape_tensors = {t.name for t in inputs if t.is_shape_tensor}
        for name, r in profile.items():
            setter = trt_profile.set_shape_input if name in shape_tensors else trt_profile.set_shape
            setter(name, r.min, r.opt, r.max)
        if config.add_optimization_profile(trt_profile) < 0:
            raise EngineBuildError(f"TensorRT rejected the optimisation profile {profile} (run with --verbose)")

    timing_cache = None
    if options.timing_cache_file:
        if backend.timing_cache_supported:
            path = Path(options.timing_cache_file)
            cache = config.create_timing_cache(path.read_bytes() if path.is_file() else b"")
            config.set_timing_cache(cache, ignore_mismatch=False)
            timing_cache = str(path)
            log.info("timing cache %s (%s)", path, "loaded" if path.is_file() else "new")
        else:
            log.warning("--timingCacheFile ignored: timing-cache operations are no-ops in %s", backend.describe())
    flags = [n for n, f in trt.BuilderFlag.__members__.items() if config.get_flag(f)]
    pools = {name: config.get_memory_pool_limit(backend.memory_pool(name)) for name in options.memory_pools}
    summary = {"target": target, "compute_capabilities": ccs, "builder_flags": flags,
               "optimization_level": config.builder_optimization_level, "memory_pools": pools,
               "timing_cache": timing_cache, "profiles": {n: r.to_dict() for n, r in profile.items()}}
    return config, summary


# --- config -> bytes -> files -------------------------------------------------------------------------------
def serialize(builder, network, config, logger) -> tuple[bytes, float]:
    """(serialized engine, build seconds)."""
    start = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    seconds = time.perf_counter() - start
    if serialized is None:
        errors = "\n  ".join(logger.errors[-10:]) or "(no error message; run with --verbose)"
        raise EngineBuildError(f"TensorRT failed to build the engine:\n  {errors}")
    return bytes(serialized), seconds


def save_timing_cache(config, path: str | Path) -> None:
    cache = config.get_timing_cache()
    if cache is not None:
        data = bytes(cache.serialize())
        atomic_write(path, lambda tmp: _write_readable(tmp, data))
        log.info("saved timing cache %s (%d bytes)", path, len(data))


def _write_readable(tmp: str, data: bytes) -> None:
    """atomic_write's temp files are 0600 (mkstemp): give the final file the usual umask permissions."""
    Path(tmp).write_bytes(data)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)


def sidecar_json(sidecar: dict) -> str:
    """Indented JSON with short lists of numbers (shapes) kept on one line."""
    text = json.dumps(sidecar, indent=2)
    number_list = r"\[\s*(-?\d+(?:,\s*-?\d+)*)\s*\]"
    return re.sub(number_list, lambda m: "[" + re.sub(r",\s*", ", ", m.group(1)) + "]", text) + "\n"


def write_engine(engine_path: str | Path, data: bytes, sidecar: dict) -> Path:
    """Write the engine, then its `<engine>.json` sidecar, each via a temp file and os.replace."""
    engine_path = Path(engine_path)
    atomic_write(engine_path, lambda tmp: _write_readable(tmp, data))
    atomic_write(sidecar_path(engine_path), lambda tmp: _write_readable(tmp, sidecar_json(sidecar).encode()))
    return engine_path


def build_engine(onnx_path: str | Path, engine_path: str | Path, options: BuildOptions | None = None,
                 metadata: dict | None = None, backend: Backend | None = None) -> dict:
    """ONNX file -> engine file + sidecar JSON; returns the sidecar dict. `metadata` is merged into it."""
    options = options or BuildOptions()
    onnx_path, engine_path = Path(onnx_path), Path(engine_path)
    if not onnx_path.is_file():
        raise BuildInputError(f"{onnx_path} does not exist: export it first (`vita-deploy export`)")
    backend = backend or load_backend()
    log.info("building %s with %s", onnx_path, backend.describe())
    builder, logger = backend.create_builder(options.verbose)
    plugins = backend.load_plugin_libraries(list(options.plugins))
    if uses_vita_plugin(onnx_path) and supports_aot_plugins(backend.trt)[0]:  # `--deform-attn vita-plugin` graphs
        plugins.append(register_vita_plugin())  # elsewhere the parser's missing-plugin error names the fix
    network, _parser, network_flags = parse_network(backend, builder, logger, onnx_path, options.fp16)
    io = network_io(network)
    for t in io:
        log.info("%-6s %-24s %-20s %s", t["mode"], t["name"], "x".join(map(str, t["shape"])) or "scalar", t["dtype"])
    config, summary = create_config(backend, builder, network, options)
    data, build_s = serialize(builder, network, config, logger)
    if summary["timing_cache"]:
        save_timing_cache(config, summary["timing_cache"])
    sidecar = {
        "format": SIDECAR_FORMAT, "format_version": SIDECAR_VERSION,
        "engine": engine_path.name, "engine_bytes": len(data),
        "onnx": str(onnx_path), "onnx_sha256": file_sha256(onnx_path),
        "tensorrt_flavour": backend.flavour, "tensorrt_version": backend.version,
        "tensorrt_module": backend.trt.__name__,
        "target": summary.pop("target"), "compute_capabilities": summary.pop("compute_capabilities"),
        "precision": network_precision(backend, network, options.fp16),
        "strongly_typed": "STRONGLY_TYPED" in network_flags or backend.strongly_typed_only,
        "profiles": summary.pop("profiles"), "io": io,
        "builder": {**summary, "network_flags": network_flags, "plugins": plugins, "fp16_flag": options.fp16},
        "build_s": round(build_s, 3), "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "host": platform.node(),
        **(metadata or {}),
    }
    write_engine(engine_path, data, sidecar)
    log.info("wrote %s (%.1f MiB, %s, %s) in %.2f s", engine_path, len(data) / 2**20, sidecar["target"],
             sidecar["precision"], build_s)
    return sidecar
