"""Honest fps and latency per stage, backend, precision and clip length; memory against video length.

    python benchmarks/bench.py --config tiny --backend torch onnxruntime --frames 18 36 72 --out benchmarks/results/cpu_tiny
    python benchmarks/bench.py --config r50 --backend torch --precision fp32 fp16 --device cuda --resolution 360p
    python benchmarks/bench.py --config tiny --memory-study 36 360 1000 10000 --out benchmarks/results/cpu_memory
    python benchmarks/bench.py --config r50 --backend onnxruntime --precision fp32 fp16 \
        --export exports/r50_native exports/r50_native_fp16

Each precision of an exported backend (onnxruntime, tensorrt) runs the export of that precision (read from its
manifest.json), so pass one --export directory per precision. fp16 for eager PyTorch is CUDA autocast: on the CPU
the model would run in fp32, so that run is listed as not run (with the reason) instead of measured under an fp16
label.

Writes NAME.json (results, machine, versions, the exact command), NAME.md (a table) and PNG plots.
End-to-end time includes mp4 decoding, pre-processing, both graphs, top-k, mask upsampling and RLE encoding.
"""
from __future__ import annotations

import argparse
import itertools
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from vita_deploy.commands import cli  # noqa: E402
from vita_deploy.config import canonical_config_name, config_names  # noqa: E402
from vita_deploy.errors import InputError  # noqa: E402
from vita_deploy.files import refuse_clobber  # noqa: E402
from vita_deploy.benchmark import (RESOLUTIONS, bench_video, environment, make_benchmark_video, plot_fps,  # noqa: E402
                                   result_from_timings, set_matmul_precision, write_json, write_markdown)
from vita_deploy.export.onnx_export import load_manifest  # noqa: E402
from vita_deploy.loading import load_model  # noqa: E402
from vita_deploy.pipeline.inference import FEATURE_MODES, eager_graphs, eager_mask_features  # noqa: E402


EXPORTED_BACKENDS = ("onnxruntime", "tensorrt")


def exports_by_precision(export_dirs: list[str], config: str) -> dict[str, str]:
    """{precision: export dir} from the manifests; refuses an export of another config or two of one precision."""
    exports: dict[str, str] = {}
    for d in export_dirs:
        manifest = load_manifest(d, check_graphs=True)
        if canonical_config_name(manifest["config"]["name"]) != config:
            raise InputError(f"--export holds the {manifest['config']['name']!r} model, not --config {config}", d,
                             f"pass an export of {config} or --config {manifest['config']['name']}")
        precision = manifest["precision"]
        if precision in exports:
            raise InputError(f"--export {exports[precision]} and {d} are both {precision}", None,
                             "pass one export per precision")
        exports[precision] = d
    return exports


def plan_runs(backends: list[str], precisions: list[str], device: torch.device, exports: dict[str, str],
              config: str) -> tuple[list[tuple[str, str]], list[dict]]:
    """(backend, precision) pairs to run, and those that cannot run as labelled on this device, with the reason.

    Nothing runs under a label it does not match: eager fp16 is CUDA autocast, so on the CPU it is listed as not
    run; an exported backend without an export of the precision asked for is refused before anything runs.
    """
    runs, not_run = [], []
    for backend in backends:
        for precision in precisions:
            if backend in ("torch", "torch-compile") and precision == "fp16" and device.type != "cuda":
                not_run.append({"backend": backend, "precision": precision, "device": str(device),
                                "reason": f"fp16 for eager PyTorch is CUDA autocast; on {device.type} the model "
                                          "would run in fp32 (the fp16 ONNX graph in ONNX Runtime runs on the CPU)"})
                continue
            if precision == "tf32" and (backend in EXPORTED_BACKENDS or device.type != "cuda"):
                not_run.append({"backend": backend, "precision": precision, "device": str(device),
                                "reason": "tf32 is an eager-PyTorch CUDA mode (TF32 tensor cores for fp32 matmuls "
                                          "and convolutions); exports are fp32 or fp16, and the CPU has no TF32"})
                continue
            if precision in ("int8", "fp8") and backend not in EXPORTED_BACKENDS:
                not_run.append({"backend": backend, "precision": precision, "device": str(device),
                                "reason": f"{precision} is a quantized export (`export --precision {precision}`); "
                                          "eager PyTorch runs fp32 / tf32 / fp16 only"})
                continue
            if backend in EXPORTED_BACKENDS and precision not in exports:
                have = ", ".join(f"{p} ({d})" for p, d in exports.items()) or "none"
                raise InputError(f"--backend {backend} --precision {precision} needs an {precision} export "
                                 f"(--export has: {have}). Make one with `vita-deploy export --config {config} "
                                 f"--deform-attn native --precision {precision} --out-dir DIR` and add DIR to --export")
            runs.append((backend, precision))
    return runs, not_run


def graphs_for(backend: str, precision: str, model, device: torch.device, export_dir: str | None,
               threads: int | None = None):
    """The two graph callables of a backend at a precision (an exported backend runs `export_dir`)."""
    if backend == "torch":
        return eager_graphs(model, amp=precision == "fp16")
    if backend == "torch-compile":
        model.frame_detector = torch.compile(model.frame_detector)
        model.vita_head = torch.compile(model.vita_head, dynamic=True)
        return eager_graphs(model, amp=precision == "fp16")
    if backend == "onnxruntime":
        from vita_deploy.runtime.ort_export import ort_graphs
        return ort_graphs(export_dir, device=device, threads=threads)
    if backend == "tensorrt":
        from vita_deploy.runtime import tensorrt_graphs
        return tensorrt_graphs(export_dir, device=device)
    raise InputError(f"unknown backend {backend}")


def mask_features_for(backend: str, precision: str, model, device: torch.device, export_dir: str | None,
                      threads: int | None = None):
    """The mask-feature graph of a backend (for --features recompute / auto), None where the export has none."""
    if backend in ("torch", "torch-compile"):
        return eager_mask_features(model, amp=precision == "fp16")
    if backend == "onnxruntime":
        from vita_deploy.runtime.ort_export import ort_mask_features
        return ort_mask_features(export_dir, device=device, threads=threads)
    from vita_deploy.runtime import tensorrt_mask_features
    return tensorrt_mask_features(export_dir, device=device)


@cli.command
def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    p = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="tiny", choices=config_names(), type=canonical_config_name)
    p.add_argument("--checkpoint", type=cli.existing_file, help="weights (default: shipped tiny checkpoint, or random for r50)")
    p.add_argument("--backend", nargs="+", default=["torch"],
                   choices=["torch", "torch-compile", "onnxruntime", "tensorrt"])
    p.add_argument("--precision", nargs="+", default=["fp32"], choices=["fp32", "tf32", "fp16", "int8", "fp8"],
                   help="eager rows set TF32 explicitly: fp32 strict, tf32 TF32 matmuls/convolutions, fp16 autocast; "
                        "int8 / fp8: exported backends only (an `export --precision int8|fp8` folder)")
    p.add_argument("--device", type=cli.device, default=cli.default_device())
    p.add_argument("--frames", nargs="+", type=cli.positive_int, default=[18, 36])
    p.add_argument("--resolution", nargs="+", default=["360p"], choices=sorted(RESOLUTIONS))
    p.add_argument("--features", nargs="+", default=["auto"], choices=FEATURE_MODES,
                   help="mask features kept, recomputed in a second pass, or auto (README: keep vs recompute)")
    p.add_argument("--export", nargs="+", type=cli.existing_dir, default=[], metavar="DIR",
                   help="export dirs (ONNX files / engines) for onnxruntime and tensorrt, one per precision")
    p.add_argument("--repeats", type=cli.positive_int, default=3)
    p.add_argument("--warmup", type=cli.nonnegative_int, default=1)
    p.add_argument("--threads", type=cli.positive_int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--memory-study", nargs="*", type=cli.positive_int, metavar="FRAMES",
                   help="peak memory vs video length, streaming vs all-frames-at-once")
    p.add_argument("--out", type=cli.output_file, default="benchmarks/results/bench", help="output path prefix (NAME.json/.md/.png)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    out = Path(args.out)
    refuse_clobber({"--out .json": out.with_suffix(".json"), "--out .md": out.with_suffix(".md"),
                    "--out _fps.png": out.with_name(out.name + "_fps.png")},
                   {"--checkpoint": args.checkpoint,
                    "--export": [f for d in args.export for f in Path(d).iterdir() if f.is_file()]})
    exports = exports_by_precision(args.export, args.config)
    runs, not_run = plan_runs(args.backend, args.precision, device, exports, args.config)
    for skip in not_run:
        print(f"not run: {skip['backend']} {skip['precision']} on {skip['device']}: {skip['reason']}", flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    env = environment(argv)
    if prog is not None and argv is not None:  # `vita-deploy bench ...`: record that command, not this script's
        env["command"] = " ".join([prog, *argv])
    results, memory = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for backend, precision in runs:
            tf32_flags = set_matmul_precision(precision) if backend not in EXPORTED_BACKENDS else None
            model = load_model(args.checkpoint, args.config).to(device)
            detector, vita = graphs_for(backend, precision, model, device, exports.get(precision), args.threads)
            mask_features = mask_features_for(backend, precision, model, device, exports.get(precision), args.threads)
            for res, frames, features in itertools.product(args.resolution, args.frames, args.features):
                clip = Path(tmp) / f"{res}_{frames}.mp4"  # written once, decoded by every run
                if not clip.exists():
                    make_benchmark_video(clip, frames, *RESOLUTIONS[res])
                e2e, stages, host, gpu = bench_video(clip, detector, vita, model.cfg, device,
                                                     args.repeats, args.warmup, features=features,
                                                     mask_features=mask_features)
                r = result_from_timings(backend, precision, device, model.cfg, res, frames, e2e, stages,
                                        host, gpu, args.repeats, args.warmup)
                r.extra["features"] = features
                if tf32_flags is not None:
                    r.extra["tf32"] = tf32_flags
                if backend in EXPORTED_BACKENDS:
                    r.extra["export"] = exports[precision]
                results.append(r)
                print(f"{args.config} {backend} {precision} {device} {res} {frames} frames --features {features}: "
                      f"{r.fps['end_to_end']:.2f} fps end to end, detector {r.fps.get('detector', 0):.2f} fps, "
                      f"host peak {host:.0f} MB" + (f", GPU peak {gpu:.0f} MB" if gpu else ""), flush=True)
        if args.memory_study:
            from vita_deploy.benchmark import memory_study
            memory = memory_study(args.config, args.checkpoint, device, Path(tmp), args.resolution[0],
                                  args.memory_study, out)
    write_json(results, out.with_suffix(".json"), env, {"memory_study": memory, "not_run": not_run})
    if results:
        write_markdown(results, out.with_suffix(".md"), env, memory, not_run)
        plot_fps(results, out.with_name(out.name + "_fps.png"))
    print(f"wrote {out.with_suffix('.json')}" + (f", {out.with_suffix('.md')}" if results else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
