"""Measure the model zoo on this machine: parameters, official-name import, eager CPU frame latency, ONNX export
(size, time), ONNX Runtime parity, TensorRT-RTX ahead-of-time build (time, engine sizes).

    python benchmarks/zoo_measure.py --configs r50-ytvis19 r101-ytvis19 swinl-ytvis19 --precisions fp32 fp16 \\
        --out benchmarks/results/zoo_cpu

Random weights, seeded (speed and sizes do not depend on them; the dataset only changes the class head, so one
config per backbone measures the architecture). Per config: the model's weights are written under the official
names as a detectron2 `model_final.pth` and loaded back with `load_checkpoint` (import check); one frame of a
16:9 720p video at the config's test size (360 short side for ResNets, 448 for Swin-L: 384x640 / 448x800
padded) goes through the eager frame detector (median of --repeats after one warm-up, --threads threads); each
precision is exported (`--deform-attn native`, dynamic N/H/W/T with the manifest's profiles), run in ONNX Runtime
on the same frame and on T=6 frame queries against eager fp32, and built with TensorRT-RTX for SM89. Writes
OUT.json and OUT.md.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from vita_deploy.commands import cli  # noqa: E402
from vita_deploy.benchmark import environment, write_rows  # noqa: E402
from vita_deploy.config import canonical_config_name, config_names, get_config  # noqa: E402
from vita_deploy.export import ExportOptions, export_model, load_manifest  # noqa: E402
from vita_deploy.modeling.checkpoint import load_checkpoint, to_official_key  # noqa: E402
from vita_deploy.modeling.model import build_model  # noqa: E402
from vita_deploy.pipeline.preprocess import padded_size, shortest_edge_size  # noqa: E402
from vita_deploy.runtime.ort_export import ort_engine  # noqa: E402


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out.float() - ref.float()).abs().max() / ref.float().abs().max().clamp_min(1e-12)).item()


def measure(name: str, precisions: list[str], work: Path, threads: int, repeats: int, build: bool) -> dict:
    cfg = get_config(name)
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    row: dict = {"config": name, "backbone": type(model.frame_detector.backbone).__name__,
                 "params_M": sum(p.numel() for p in model.parameters()) / 1e6,
                 "backbone_params_M": sum(p.numel() for p in model.frame_detector.backbone.parameters()) / 1e6}
    # Import check: our weights under the official names, as a detectron2 file, loaded back.
    ckpt = work / f"{name}_model_final.pth"
    torch.save({"model": {to_official_key(k): v for k, v in model.state_dict().items()}}, ckpt)
    t0 = time.perf_counter()
    loaded, _ = load_checkpoint(ckpt, cfg)
    row["import_s"] = time.perf_counter() - t0
    row["import_exact"] = all(torch.equal(loaded.state_dict()[k], v) for k, v in model.state_dict().items())
    row["checkpoint_MiB"] = ckpt.stat().st_size / 2**20
    ckpt.unlink()
    del loaded
    # Eager frame latency at the test size.
    h, w = padded_size(*shortest_edge_size(720, 1280, cfg.input.min_size_test, cfg.input.max_size_test))
    row["frame"] = f"{h}x{w}"
    x = torch.randn(1, 3, h, w, generator=torch.Generator().manual_seed(1))
    torch.set_num_threads(threads)
    times = []
    with torch.inference_mode():
        ref = model.frame_detector(x)  # warm-up and reference
        for _ in range(repeats):
            t0 = time.perf_counter()
            model.frame_detector(x)
            times.append(time.perf_counter() - t0)
        fq = torch.randn(6, cfg.frame_decoder.num_queries, cfg.frame_decoder.hidden_dim,
                         generator=torch.Generator().manual_seed(2))
        ref_vita = model.vita_head(fq)
    row["eager_frame_ms"] = statistics.median(times) * 1000
    row["threads"] = threads
    torch.set_num_threads(1)
    for precision in precisions:
        out = work / f"{name}_{precision}"
        t0 = time.perf_counter()
        export_model(model, out, ExportOptions(deform_attn="native", precision=precision), log=lambda _: None,
                     graphs=("frame_detector", "vita_head"))
        r: dict = {"export_s": time.perf_counter() - t0}
        manifest = load_manifest(out)
        r["onnx_MiB"] = {g: sum(f.stat().st_size for f in out.glob(Path(i["file"]).stem + ".onnx*")) / 2**20
                         for g, i in manifest["graphs"].items()}
        r["opt_images"] = manifest["graphs"]["frame_detector"]["profiles"]["images"]["opt"]
        det = ort_engine(out, "frame_detector", threads=threads).infer({"images": x})
        vita = ort_engine(out, "vita_head", threads=threads).infer({"frame_queries": fq})
        r["ort_rel_err"] = {"frame_queries": rel_err(det["frame_queries"], ref[0]),
                            "mask_features": rel_err(det["mask_features"], ref[1]),
                            "class_logits": rel_err(vita["class_logits"], ref_vita[0]),
                            "mask_embed": rel_err(vita["mask_embed"], ref_vita[1])}
        if build:
            from vita_deploy.engines.manifest import build_from_manifest

            sidecars = build_from_manifest(out / "manifest.json", out)
            r["rtx_build_s"] = {g: s["build_s"] for g, s in sidecars.items()}
            r["engine_MiB"] = {g: (out / f"{g}.engine").stat().st_size / 2**20 for g in sidecars}
        row[precision] = r
        print(json.dumps({name: {precision: r}}), flush=True)
        for f in out.iterdir():  # free the disk for the next config
            f.unlink()
        out.rmdir()
    return row


def markdown(rows: list[dict], env: dict) -> str:
    lines = [f"Machine: {env['processor']}, {env['cpu_count']} cores ({env['torch_threads']} torch threads), "
             f"{env['platform']}; torch {env['torch']}; {env['date']}; command: `{env['command']}`", "",
             "| config | params (M) | backbone (M) | import | eager frame | precision | export | ONNX MiB (det / vita) "
             "| ORT rel err (worst) | RTX build s (det / vita) | engine MiB (det / vita) |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for row in rows:
        for p in (k for k in ("fp32", "fp16") if k in row):
            r = row[p]
            b = r.get("rtx_build_s", {})
            e = r.get("engine_MiB", {})
            lines.append(
                f"| {row['config']} | {row['params_M']:.1f} | {row['backbone_params_M']:.1f} | "
                f"{'exact' if row['import_exact'] else 'DIFFERS'}, {row['import_s']:.1f} s | "
                f"{row['eager_frame_ms']:.0f} ms at {row['frame']} ({row['threads']} thr) | {p} | "
                f"{r['export_s']:.0f} s | {r['onnx_MiB']['frame_detector']:.0f} / {r['onnx_MiB']['vita_head']:.0f} | "
                f"{max(r['ort_rel_err'].values()):.1e} | "
                + (f"{b['frame_detector']:.0f} / {b['vita_head']:.0f} | {e['frame_detector']:.0f} / "
                   f"{e['vita_head']:.0f} |" if b else "not built | |"))
    return "\n".join(lines) + "\n"


@cli.command
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", nargs="+", default=["r50-ytvis19", "r101-ytvis19", "swinl-ytvis19"],
                   choices=config_names(), type=canonical_config_name)
    p.add_argument("--precisions", nargs="+", default=["fp32"], choices=["fp32", "fp16"])
    p.add_argument("--threads", type=cli.positive_int, default=2)
    p.add_argument("--repeats", type=cli.positive_int, default=3)
    p.add_argument("--no-build", action="store_true", help="skip the TensorRT-RTX builds")
    p.add_argument("--out", type=cli.output_file, required=True, help="writes OUT.json and OUT.md")
    a = p.parse_args(argv)
    env = environment(None if argv is None else ["benchmarks/zoo_measure.py", *argv])
    rows = []
    with tempfile.TemporaryDirectory(prefix="vita_zoo_") as tmp:
        for name in a.configs:
            rows.append(measure(name, a.precisions, Path(tmp), a.threads, a.repeats, not a.no_build))
            write_rows(Path(a.out), env, rows, markdown(rows, env))  # partial results survive an interruption
    print(markdown(rows, env))
    return 0


if __name__ == "__main__":
    sys.exit(main())
