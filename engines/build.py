"""trtexec-style TensorRT engine builder (datacenter TensorRT 10/11, else TensorRT-RTX).

    python engines/build.py --onnx exports/tiny/vita_head.onnx --saveEngine exports/tiny/vita_head.engine \\
        --minShapes frame_queries:1x20x64 --optShapes frame_queries:36x20x64 --maxShapes frame_queries:360x20x64
    python engines/build.py --manifest exports/tiny/manifest.json   # every graph, profiles from the manifest

Flags follow trtexec (`--flag value` or `--flag=value`). Shapes: `name:AxBxC[,name2:...]`, a quoted name for
names with colons ('in:0':1x3x8x8), `name:scalar` for 0-D; give only --optShapes or all three. Unlike
trtexec, networks are strongly typed by default (precision comes from the ONNX, as in TensorRT 11 and
TensorRT-RTX); --fp16 selects TensorRT 10's weakly typed FP16 mode and is refused by strongly typed builders.
TensorRT-RTX builds ahead of time for --computeCapability (default: the visible GPU, else 89), so it works on
machines without a GPU. Errors print one message and exit with status 2.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from vita_deploy.engines import (BuildOptions, EngineBuildError, build_engine, build_from_manifest,  # noqa: E402
                                 combine_shape_flags, parse_mem_pool_size)


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    # model
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--onnx", help="ONNX model to build")
    src.add_argument("--manifest", help="an export's manifest.json: build every graph with its declared profiles")
    p.add_argument("--saveEngine", help="engine file to write (with --onnx); the sidecar is <engine>.json")
    p.add_argument("--out-dir", help="folder for --manifest engines (default: the export folder)")
    # shapes and precision
    p.add_argument("--minShapes", help="min shapes of the profile, name:AxBxC,...")
    p.add_argument("--optShapes", help="opt shapes (alone: min = opt = max)")
    p.add_argument("--maxShapes", help="max shapes of the profile")
    p.add_argument("--fp16", action="store_true", help="FP16 builder flag (TensorRT 10 only; weakly typed)")
    p.add_argument("--stronglyTyped", action="store_true", help="accepted for trtexec compatibility (the default)")
    # builder
    p.add_argument("--memPoolSize", help="pool:size[,pool:size], size in MiB or with B/K/M/G, e.g. workspace:4096")
    p.add_argument("--timingCacheFile", help="load/save the timing cache (datacenter TensorRT; no-op on RTX)")
    p.add_argument("--builderOptimizationLevel", type=int, help="0..5 (TensorRT default 3)")
    p.add_argument("--computeCapability", action="append", default=[],
                   help="TensorRT-RTX ahead-of-time target(s), e.g. 89 or 86,89 (default: this GPU, else 89)")
    p.add_argument("--plugins", action="extend", nargs="+", default=[], help="plugin libraries (.so) to load")
    p.add_argument("--verbose", action="store_true", help="TensorRT verbose log")
    return p


def options_from_args(a: argparse.Namespace) -> BuildOptions:
    if a.fp16 and a.stronglyTyped:
        raise EngineBuildError("--fp16 (weak typing) and --stronglyTyped exclude each other")
    ccs = tuple(c for spec in a.computeCapability for c in spec.split(",") if c.strip())
    return BuildOptions(shapes=combine_shape_flags(a.minShapes, a.optShapes, a.maxShapes), fp16=a.fp16,
                        memory_pools=parse_mem_pool_size(a.memPoolSize), timing_cache_file=a.timingCacheFile,
                        optimization_level=a.builderOptimizationLevel, compute_capabilities=ccs,
                        plugins=tuple(a.plugins), verbose=a.verbose)


def main(argv: list[str] | None = None) -> int:
    a = get_args_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if a.verbose else logging.INFO, format="[build] %(message)s")
    try:
        options = options_from_args(a)
        if a.manifest:
            if a.saveEngine:
                raise EngineBuildError("--saveEngine goes with --onnx; with --manifest use --out-dir")
            results = build_from_manifest(a.manifest, a.out_dir, options)
        else:
            if not a.saveEngine:
                raise EngineBuildError("--saveEngine is required with --onnx")
            results = {Path(a.onnx).stem: build_engine(a.onnx, a.saveEngine, options)}
    except EngineBuildError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for name, s in results.items():
        print(f"{name}: {s['engine']} {s['engine_bytes'] / 2**20:.1f} MiB, {s['tensorrt_flavour']} "
              f"{s['tensorrt_version']}, {s['target']}, {s['precision']}, built in {s['build_s']:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
