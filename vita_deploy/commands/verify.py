"""Verify an export (ONNX Runtime) or its engines (TensorRT) against the eager PyTorch model: every graph the
manifest lists (frame detector, VITA head, and the mask-feature graph of recompute mode).

    vita-deploy verify --export exports/tiny --backend onnxruntime --videos data/synthetic

Prints a parity table: per-tensor max abs / relative error on seeded inputs, and on labelled videos
(`<videos>/valid.json` + `valid/JPEGImages`) the matched-instance mask IoU and the AP difference. Exits 1
when a threshold is exceeded. Thresholds per precision (THRESHOLDS below):
- fp32: relative tensor error (max |backend - eager| / max |eager|) < 1e-4; matched mask IoU >= 0.99; |dAP| <= 0.1
- fp16: relative tensor error < 3e-2; matched mask IoU >= 0.95; |dAP| <= 1.0
- int8 / fp8 (Q/DQ graphs of `export --precision int8|fp8`; the VITA head stays fp32): 8-bit activations make
  max-abs errors meaningless on random inputs, so tensors are judged by the mean row cosine similarity to eager
  (frame queries, mask features, ...) >= 0.99 (int8) / 0.995 (fp8); on labelled videos the *mean* matched mask IoU
  >= 0.9 and |dAP| <= 0.5 (int8) / 0.3 (fp8). ONNX Runtime has no CPU FP8 kernels: fp8 graphs run with
  `session.disable_quant_qdq` (Q/DQ pairs evaluated as fake-quantized fp32), which is what is verified.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import numpy as np
import torch
from pycocotools import mask as mask_utils
from scipy.optimize import linear_sum_assignment

from vita_deploy.commands import cli
from vita_deploy.data.ytvis_json import load_ytvis_json
from vita_deploy.errors import InputError
from vita_deploy.evaluation.ytvis_eval import evaluate_ytvis, video_iou
from vita_deploy.export.onnx_export import ExportError, load_manifest
from vita_deploy.pipeline.inference import VideoPrediction, eager_graphs, eager_mask_features, run_video
from vita_deploy.files import atomic_write_text, ensure_parents, file_sha256, refuse_clobber
from vita_deploy.runtime.base import RuntimeMismatchError

THRESHOLDS = {"fp32": {"tensor_rel": 1e-4, "mask_iou": 0.99, "delta_ap": 0.1},
              "fp16": {"tensor_rel": 3e-2, "mask_iou": 0.95, "delta_ap": 1.0},
              "int8": {"tensor_cosine": 0.99, "mean_mask_iou": 0.9, "delta_ap": 0.5},
              "fp8": {"tensor_cosine": 0.995, "mean_mask_iou": 0.9, "delta_ap": 0.3}}


def row_cosine(out: torch.Tensor, ref: torch.Tensor) -> float:
    """Mean cosine similarity of matching rows (last axis; channels first for 4-D feature maps)."""
    if out.dim() == 4:  # (N, C, H, W): one C-vector per pixel
        out, ref = out.movedim(1, -1), ref.movedim(1, -1)
    a, b = out.double().reshape(-1, out.shape[-1]), ref.double().reshape(-1, ref.shape[-1])
    return torch.nn.functional.cosine_similarity(a, b, dim=1, eps=1e-12).mean().item()


def tensor_report(out: torch.Tensor, ref: torch.Tensor) -> dict:
    out, ref = out.detach().double().cpu(), ref.detach().double().cpu()
    err = (out - ref).abs()
    return {"shape": list(out.shape), "finite": bool(torch.isfinite(out).all()), "max_abs": err.max().item(),
            "mean_abs": err.mean().item(), "p99_abs": torch.quantile(err.flatten()[:1_000_000], 0.99).item(),
            "rel": err.max().item() / max(ref.abs().max().item(), 1e-12), "cosine": row_cosine(out, ref)}


def tensor_ok(r: dict, limits: dict) -> bool:
    """A tensor row passes: finite and within the precision's relative-error or cosine limit."""
    if not r["finite"]:
        return False
    return r["cosine"] >= limits["tensor_cosine"] if "tensor_cosine" in limits else r["rel"] < limits["tensor_rel"]


def parity_iou(a: list[dict], b: list[dict]) -> float:
    """Video mask IoU of two predictions of the same instance; two empty masks are identical (1.0), unlike the
    evaluator's convention (0 for an empty union)."""
    empty = all(mask_utils.area(r) == 0 for r in a) and all(mask_utils.area(r) == 0 for r in b)
    return 1.0 if empty else video_iou(a, b)


def matched_mask_ious(a: VideoPrediction, b: VideoPrediction) -> list[float]:
    """Hungarian matching of two predictions' instances by video mask IoU (same label only)."""
    if not a.segmentations or not b.segmentations:
        return []
    cost = np.zeros((len(a.scores), len(b.scores)))
    for i, (la, sa) in enumerate(zip(a.labels, a.segmentations)):
        for j, (lb, sb) in enumerate(zip(b.labels, b.segmentations)):
            cost[i, j] = -parity_iou(sa, sb) if la == lb else 1.0
    rows, cols = linear_sum_assignment(cost)
    return [max(-cost[i, j], 0.0) for i, j in zip(rows, cols)]


@cli.command
def main(argv: list[str] | None = None, prog: str = "vita-deploy verify") -> int:
    p = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--export", type=cli.existing_dir, required=True,
                   help="export folder (manifest.json, ONNX files, engines)")
    p.add_argument("--backend", choices=["onnxruntime", "tensorrt"], default="onnxruntime")
    p.add_argument("--checkpoint", type=cli.existing_file,
                   help="weights the export was made from (default: the shipped tiny checkpoint)")
    p.add_argument("--videos", type=cli.existing_dir,
                   help="YouTube-VIS folder with valid.json + valid/JPEGImages for video parity")
    p.add_argument("--num-videos", type=cli.positive_int, default=8)
    p.add_argument("--device", type=cli.device, default=cli.default_device())
    p.add_argument("--report", type=cli.output_file, help="write the parity report as JSON here")
    p.add_argument("--chunk-size", type=cli.positive_int,
                   help="frames per detector call, in the batch check and on the videos (default: the config's, 18 "
                        "for the zoo; smaller bounds memory: r50 at 18 frames of 360p needs more than 24 GiB on "
                        "the CPU)")
    p.add_argument("--int8-graph", choices=["auto", "tensorrt"], default="auto",
                   help="INT8 exports on ONNX Runtime CPU: auto runs the CPU twin (U8S8, what `infer` runs on the "
                        "CPU); tensorrt runs the S8S8 Q/DQ graph TensorRT builds, emulated in fp32 (its accuracy "
                        "on a machine without a GPU)")
    a = p.parse_args(argv)
    if a.backend == "tensorrt" and not a.device.startswith("cuda"):
        p.error("TensorRT engines run on a CUDA GPU only: use --backend onnxruntime on the CPU")
    from vita_deploy.loading import DEFAULT_CHECKPOINT, load_model, random_weights
    from vita_deploy.pipeline.video_io import read_image

    export_files = [f for f in Path(a.export).iterdir() if f.is_file()]
    refuse_clobber({"--report": a.report}, {"--export": export_files, "--checkpoint": a.checkpoint,
                                            "--videos valid.json": Path(a.videos) / "valid.json" if a.videos else None})
    ensure_parents(a.report)
    gt_videos = None
    if a.videos:
        if not (Path(a.videos) / "valid.json").is_file():
            raise InputError("--videos has no valid.json", a.videos, "pass a YouTube-VIS folder with valid.json and "
                             "valid/JPEGImages (e.g. from `vita-deploy data --val-videos N`)")
        gt_videos = load_ytvis_json(Path(a.videos) / "valid.json")
    manifest = load_manifest(a.export, check_graphs=True)
    # the weights the export was made from: --checkpoint, else the manifest's checkpoint (the shipped one where the
    # manifest's path is from another machine but the hash matches), else random weights (seed 0, as the export)
    checkpoint = a.checkpoint or manifest.get("checkpoint")
    if checkpoint and not Path(checkpoint).is_file():
        if not (Path(DEFAULT_CHECKPOINT).is_file() and file_sha256(DEFAULT_CHECKPOINT) == manifest["checkpoint_sha256"]):
            raise InputError(f"the checkpoint {a.export} was exported from is not here", checkpoint,
                             "pass --checkpoint with that file")
        checkpoint = DEFAULT_CHECKPOINT
    if manifest["checkpoint_sha256"] and checkpoint and file_sha256(checkpoint) != manifest["checkpoint_sha256"]:
        raise RuntimeMismatchError(f"{checkpoint} is not the checkpoint {a.export} was exported from (sha256 "
                                   "differs): pass --checkpoint with the right file, or re-export")
    if checkpoint:
        model = load_model(checkpoint, manifest["config"]["name"])
    else:  # not load_model(None, "tiny"): that is the shipped checkpoint
        print(f"{a.export} was exported without a checkpoint: verifying against the same random weights (seed 0)")
        model = random_weights(manifest["config"]["name"])
    model = model.to(a.device)
    graphs = manifest["graphs"]
    two_graphs = "frame_detector" in graphs and "vita_head" in graphs
    backend = mask_backend = None
    if a.backend == "onnxruntime":
        from vita_deploy.runtime.ort_export import ort_engine, ort_mask_features
        from vita_deploy.runtime.base import graphs_from_engines
        if two_graphs:
            engines = {g: ort_engine(a.export, g, a.device, int8_graph=a.int8_graph)
                       for g in ("frame_detector", "vita_head")}
            backend = graphs_from_engines(engines["frame_detector"], engines["vita_head"])
        mask_backend = ort_mask_features(a.export, a.device, int8_graph=a.int8_graph)
    else:
        from vita_deploy.runtime import tensorrt_graphs, tensorrt_mask_features
        backend = tensorrt_graphs(a.export, a.device) if two_graphs else None
        mask_backend = tensorrt_mask_features(a.export, a.device)
    if backend is None and mask_backend is None:
        raise ExportError(f"{a.export} has neither the frame detector + VITA head nor the mask-feature graph: "
                          "re-export with `vita-deploy export`")
    limits = THRESHOLDS[manifest["precision"]]
    eager = eager_graphs(model)
    cfg = model.cfg
    if a.chunk_size:
        max_n = graphs.get("frame_detector", graphs.get("mask_features", {})).get("profiles", {}).get(
            "images", {}).get("max", [a.chunk_size])[0]
        if a.chunk_size > max_n:
            raise InputError(f"--chunk-size {a.chunk_size} is more than the export's detector takes ({max_n} frames)",
                             a.export, f"pass --chunk-size {max_n} or less")
        cfg = dataclasses.replace(cfg, inference=dataclasses.replace(cfg.inference, chunk_size=a.chunk_size))
    g = torch.Generator().manual_seed(0)
    rows, failed = [], False
    if backend is not None:
        opt = graphs["frame_detector"]["profiles"]["images"]["opt"]
        for n in (1, cfg.inference.chunk_size):
            x = torch.randn(n, 3, opt[2], opt[3], generator=g).to(a.device)
            for name, out, ref in zip(("frame_queries", "mask_features"), backend[0](x), eager[0](x)):
                rows.append((f"frame_detector N={n} {name}", tensor_report(out, ref)))
        max_t = graphs["vita_head"]["profiles"]["frame_queries"]["max"][0]
        for t in sorted({1, min(7, max_t), min(36, max_t)}):
            fq = torch.randn(t, cfg.frame_decoder.num_queries, cfg.vita.hidden_dim, generator=g).to(a.device)
            for name, out, ref in zip(("class_logits", "mask_embed"), backend[1](fq), eager[1](fq)):
                rows.append((f"vita_head T={t} {name}", tensor_report(out, ref)))
    if mask_backend is not None:  # the mask-feature graph (recompute mode) against the eager detector's own
        opt = graphs["mask_features"]["profiles"]["images"]["opt"]
        eager_mf = eager_mask_features(model)
        for n in (1, cfg.inference.chunk_size):
            x = torch.randn(n, 3, opt[2], opt[3], generator=g).to(a.device)
            rows.append((f"mask_features N={n} mask_features", tensor_report(mask_backend(x), eager_mf(x))))
    print(f"{'tensor':42s} {'max abs':>10s} {'p99 abs':>10s} {'rel':>10s} {'cosine':>9s}  ok")
    for name, r in rows:
        ok = tensor_ok(r, limits)
        failed |= not ok
        print(f"{name:42s} {r['max_abs']:10.2e} {r['p99_abs']:10.2e} {r['rel']:10.2e} {r['cosine']:9.6f}  "
              f"{'yes' if ok else 'NO'}")
    if manifest["precision"] == "fp8" and a.backend == "onnxruntime":
        print("fp8: ONNX Runtime has no CPU FP8 kernels; the Q/DQ graph runs with session.disable_quant_qdq "
              "(fake-quantized fp32)")
    cpu_twin = (a.backend == "onnxruntime" and a.int8_graph == "auto" and a.device == "cpu"
                and any(g.get("cpu_int8") for g in graphs.values()))
    if manifest["precision"] == "int8" and a.backend == "onnxruntime":
        print("int8: " + ("the CPU twin graphs (U8S8, fused QLinearConv / QLinearMatMul) ran" if cpu_twin else
                          "the S8S8 Q/DQ graphs TensorRT builds ran (emulated: fp32 between Q/DQ pairs)"))
    report = {"backend": a.backend, "precision": manifest["precision"], "thresholds": limits,
              "int8_graph": ("cpu twin (U8S8)" if cpu_twin else "tensorrt (S8S8 Q/DQ)")
              if manifest["precision"] == "int8" else None,
              "tensors": dict(rows)}
    if a.videos and backend is not None:
        root = Path(a.videos)
        gt = gt_videos
        videos = gt["videos"][: a.num_videos]
        ids = {v["id"] for v in videos}
        gt = {**gt, "videos": videos, "annotations": [x for x in gt.get("annotations") or [] if x["video_id"] in ids]}
        cat_ids = sorted(c["id"] for c in gt["categories"])
        with_ap = len(cat_ids) == cfg.num_classes
        if not with_ap:  # e.g. a zoo model (40 classes) on the synthetic set: masks still compare, labels do not
            print(f"AP not computed: the model has {cfg.num_classes} classes, {Path(a.videos) / 'valid.json'} has "
                  f"{len(cat_ids)} categories; comparing masks only")
        results = {"eager": [], "backend": []}
        ious = []
        for v in videos:
            files = [root / "valid" / "JPEGImages" / f for f in v["file_names"]]
            frames = [read_image(f) for f in files]
            pe = run_video(frames, *eager, cfg, device=a.device, features="keep")
            pb = run_video(frames, *backend, cfg, device=a.device, features="keep")
            if with_ap:
                results["eager"] += pe.to_ytvis(v["id"], cat_ids)
                results["backend"] += pb.to_ytvis(v["id"], cat_ids)
            ious += matched_mask_ious(pe, pb)
            if mask_backend is not None:  # recompute mode on the backend gives the backend's keep-mode result
                pr = run_video(frames, *backend, cfg, mask_features=mask_backend, features="recompute",
                               device=a.device)
                ious += matched_mask_ious(pe, pr)
        ap = {k: evaluate_ytvis(gt, r)["AP"] for k, r in results.items()} if gt["annotations"] and with_ap else None
        video = {"videos": len(videos), "instances": len(ious), "min_matched_iou": min(ious) if ious else None,
                 "mean_matched_iou": float(np.mean(ious)) if ious else None}
        if ap:
            video.update(ap_eager=ap["eager"], ap_backend=ap["backend"], delta_ap=ap["backend"] - ap["eager"])
        iou_ok = not ious or (min(ious) >= limits["mask_iou"] if "mask_iou" in limits
                              else float(np.mean(ious)) >= limits["mean_mask_iou"])
        ok = iou_ok and (not ap or abs(video["delta_ap"]) <= limits["delta_ap"])
        failed |= not ok
        print(f"videos: {len(videos)}, matched instances {len(ious)}, min mask IoU {video['min_matched_iou']:.4f}, "
              f"mean {video['mean_matched_iou']:.4f}" + (f", AP eager {ap['eager']:.2f} vs backend "
                                                          f"{ap['backend']:.2f} (dAP {video['delta_ap']:+.3f})"
                                                          if ap else "") + f"  {'yes' if ok else 'NO'}")
        report["video"] = video
    if a.report:
        atomic_write_text(a.report, json.dumps(report, indent=2))
    print("PASS" if not failed else "FAIL: a parity threshold was exceeded (see the table)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(prog="python -m vita_deploy.commands.verify"))
