"""`vita-deploy build`: trtexec-style TensorRT engine builder (datacenter TensorRT 10/11, else TensorRT-RTX).

    vita-deploy build --onnx exports/tiny/vita_head.onnx --saveEngine exports/tiny/vita_head.engine \\
        --minShapes frame_queries:1x20x64 --optShapes frame_queries:36x20x64 --maxShapes frame_queries:360x20x64
    vita-deploy build --manifest exports/tiny/manifest.json   # every graph, profiles from the manifest

Flags follow trtexec (`--flag value` or `--flag=value`). Shapes: `name:AxBxC[,name2:...]`, a quoted name for
names with colons ('in:0':1x3x8x8), `name:scalar` for 0-D; give only --optShapes or all three. Unlike
trtexec, networks are strongly typed by default (precision comes from the ONNX, as in TensorRT 11 and
TensorRT-RTX); --fp16 selects TensorRT 10's weakly typed FP16 mode and is refused by strongly typed builders.
TensorRT-RTX builds ahead of time for --computeCapability (default: the visible GPU, else 89), so it works on
machines without a GPU. Errors print one message and exit with status 2. `vita-deploy build` (in a
checkout) is the same command.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

from vita_deploy.commands import cli
from vita_deploy.engines import (BuildOptions, EngineBuildError, build_engine, build_from_manifest,
                                 combine_shape_flags, parse_mem_pool_size, read_manifest)
from vita_deploy.engines.builder import sidecar_path
from vita_deploy.files import refuse_clobber


def get_args_parser(prog: str = "vita-deploy build") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    # model
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--onnx", type=cli.existing_file, help="ONNX model to build")
    src.add_argument("--manifest", type=cli.existing_path,
                     help="an export's manifest.json: build every graph with its declared profiles")
    p.add_argument("--saveEngine", type=cli.output_file,
                   help="engine file to write (with --onnx); the sidecar is <engine>.json")
    p.add_argument("--out-dir", type=cli.output_dir, help="folder for --manifest engines (default: the export folder)")
    # shapes and precision
    p.add_argument("--minShapes", help="min shapes of the profile, name:AxBxC,...")
    p.add_argument("--optShapes", help="opt shapes (alone: min = opt = max)")
    p.add_argument("--maxShapes", help="max shapes of the profile")
    p.add_argument("--fp16", action="store_true", help="FP16 builder flag (TensorRT 10 only; weakly typed)")
    p.add_argument("--stronglyTyped", action="store_true", help="accepted for trtexec compatibility (the default)")
    # builder
    p.add_argument("--memPoolSize", help="pool:size[,pool:size], size in MiB or with B/K/M/G, e.g. workspace:4096")
    p.add_argument("--timingCacheFile", type=cli.output_file, help="load/save the timing cache (datacenter TensorRT; no-op on RTX)")
    p.add_argument("--builderOptimizationLevel", type=optimization_level, help="0..5 (TensorRT default 3)")
    p.add_argument("--computeCapability", action="append", default=[],
                   help="TensorRT-RTX ahead-of-time target(s), e.g. 89 or 86,89 (default: this GPU, else 89)")
    p.add_argument("--plugins", action="extend", nargs="+", type=cli.existing_file, default=[], help="plugin libraries (.so) to load")
    p.add_argument("--verbose", action="store_true", help="TensorRT verbose log")
    return p


def optimization_level(text: str) -> int:
    """TensorRT's builder optimization level, 0..5."""
    value = cli.nonnegative_int(text)
    if value > 5:
        raise argparse.ArgumentTypeError(f"must be between 0 and 5 (0..5), not {value}")
    return value


def check_onnx(path: Path) -> None:
    """Parse the ONNX file before TensorRT does, so a truncated or foreign file is named in one sentence."""
    import onnx

    try:
        onnx.load(str(path), load_external_data=False)
    except Exception as e:  # noqa: BLE001 - protobuf raises several types for a corrupt file
        raise EngineBuildError(f"{path} is not a readable ONNX file ({type(e).__name__}): the file is truncated, "
                               "corrupt or not ONNX; re-export it (`vita-deploy export`)") from None


def refuse_overwriting_inputs(a: argparse.Namespace) -> None:
    """No engine, sidecar or timing cache may be written onto the ONNX file(s), the manifest or a plugin."""
    plugins = {f"--plugins {p}": p for p in a.plugins}
    cache = {"--timingCacheFile": a.timingCacheFile}
    if a.onnx:
        refuse_clobber({"--saveEngine": a.saveEngine, "the sidecar": sidecar_path(Path(a.saveEngine)), **cache},
                       {"--onnx": a.onnx, **plugins})
        return
    manifest = read_manifest(a.manifest)
    export_dir = Path(a.manifest) if Path(a.manifest).is_dir() else Path(a.manifest).parent
    out = Path(a.out_dir) if a.out_dir else export_dir
    inputs = {"--manifest": export_dir / "manifest.json", **plugins,
              **{f"ONNX file of graph {g}": info["onnx_path"] for g, info in manifest["graphs"].items()}}
    outputs = {}
    for g, info in manifest["graphs"].items():
        engine = out / (Path(info["file"]).stem + ".engine")
        outputs[f"engine of graph {g}"], outputs[f"sidecar of graph {g}"] = engine, sidecar_path(engine)
    refuse_clobber({**outputs, **cache}, inputs)


def options_from_args(a: argparse.Namespace) -> BuildOptions:
    if a.fp16 and a.stronglyTyped:
        raise EngineBuildError("--fp16 (weak typing) and --stronglyTyped exclude each other")
    ccs = tuple(c for spec in a.computeCapability for c in spec.split(",") if c.strip())
    return BuildOptions(shapes=combine_shape_flags(a.minShapes, a.optShapes, a.maxShapes), fp16=a.fp16,
                        memory_pools=parse_mem_pool_size(a.memPoolSize), timing_cache_file=a.timingCacheFile,
                        optimization_level=a.builderOptimizationLevel, compute_capabilities=ccs,
                        plugins=tuple(a.plugins), verbose=a.verbose)


@cli.command
def main(argv: list[str] | None = None, prog: str = "vita-deploy build") -> int:
    p = get_args_parser(prog)
    a = p.parse_args(argv)
    if a.manifest and a.saveEngine:
        p.error("--saveEngine goes with --onnx; with --manifest use --out-dir")
    if a.onnx and not a.saveEngine:
        p.error("--saveEngine is required with --onnx")
    logging.basicConfig(level=logging.DEBUG if a.verbose else logging.INFO, format="[build] %(message)s")
    options = options_from_args(a)
    refuse_overwriting_inputs(a)
    if a.manifest:
        results = build_from_manifest(a.manifest, a.out_dir, options)
    else:
        check_onnx(Path(a.onnx))
        results = {Path(a.onnx).stem: build_engine(a.onnx, a.saveEngine, options)}
    for name, s in results.items():
        print(f"{name}: {s['engine']} {s['engine_bytes'] / 2**20:.1f} MiB, {s['tensorrt_flavour']} "
              f"{s['tensorrt_version']}, {s['target']}, {s['precision']}, built in {s['build_s']:.2f} s")
    return 0
