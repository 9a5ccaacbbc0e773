"""trtexec-style TensorRT engine builder.

    python engines/build.py --onnx exports/tiny/vita_head.onnx --saveEngine vita_head.engine \\
        --minShapes frame_queries:1x20x64 --optShapes frame_queries:36x20x64 --maxShapes frame_queries:360x20x64
    python engines/build.py --manifest exports/tiny/manifest.json      # every graph, profiles from the manifest

Uses datacenter TensorRT (`import tensorrt`) when installed, else TensorRT-RTX (ahead-of-time for
--computeCapability, default 89, which works on machines without a GPU).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from vita_deploy.engines.builder import BuildOptions, EngineBuildError, build_engine, build_from_manifest, parse_shapes  # noqa: E402
from vita_deploy.export.onnx_export import ExportError  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--onnx", help="ONNX model to build")
    src.add_argument("--manifest", help="manifest.json of an export: build every graph")
    p.add_argument("--saveEngine", help="engine file to write (with --onnx)")
    p.add_argument("--out-dir", help="where --manifest writes engines (default: next to the ONNX files)")
    p.add_argument("--fp16", action="store_true", help="FP16 builder flag (TensorRT 10 only)")
    p.add_argument("--minShapes", default="")
    p.add_argument("--optShapes", default="")
    p.add_argument("--maxShapes", default="")
    p.add_argument("--memPoolSize", default="", help="workspace:MiB")
    p.add_argument("--timingCacheFile")
    p.add_argument("--builderOptimizationLevel", type=int)
    p.add_argument("--computeCapability", help="TensorRT-RTX ahead-of-time target, e.g. 89")
    p.add_argument("--plugins", nargs="*", default=[], help="plugin libraries to load")
    p.add_argument("--verbose", action="store_true")
    a = p.parse_args(argv)
    try:
        workspace = None
        if a.memPoolSize:
            pool, _, mib = a.memPoolSize.partition(":")
            if pool != "workspace" or not mib.isdigit():
                raise EngineBuildError(f"--memPoolSize {a.memPoolSize!r}: use workspace:MiB (e.g. workspace:4096)")
            workspace = int(mib)
        options = BuildOptions(parse_shapes(a.minShapes), parse_shapes(a.optShapes), parse_shapes(a.maxShapes),
                               a.fp16, workspace, a.timingCacheFile, a.builderOptimizationLevel, a.computeCapability,
                               a.plugins, a.verbose)
        if a.manifest:
            results = build_from_manifest(a.manifest, a.out_dir, options)
        else:
            if not a.saveEngine:
                raise EngineBuildError("--saveEngine is required with --onnx")
            results = {a.onnx: build_engine(a.onnx, a.saveEngine, options)}
    except (EngineBuildError, ExportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for name, sidecar in results.items():
        print(f"{name}: {sidecar['tensorrt_flavour']} {sidecar['tensorrt_version']}, {sidecar['target']}, "
              f"{sidecar['engine_bytes'] / 2**20:.1f} MiB, built in {sidecar['build_s']:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
