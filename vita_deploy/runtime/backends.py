"""A video file through `run_video` on a backend: the eager model (`torch`) or an export on ONNX Runtime or
TensorRT. Used by `vita-deploy infer`, the batch job and the windowed mode."""
from __future__ import annotations

import time
from pathlib import Path

from vita_deploy.errors import InputError
from vita_deploy.modeling.model import VitaModel
from vita_deploy.pipeline.inference import FrameSink, VideoPrediction, eager_graphs, eager_mask_features, run_video
from vita_deploy.pipeline.video_io import open_video


def backend_graphs(backend: str, export: str | None, device: str):
    """(DetectorFn, VitaFn, ModelConfig) of an export on ONNX Runtime or TensorRT."""
    from vita_deploy.config import ModelConfig
    from vita_deploy.export.onnx_export import load_manifest

    if not export:
        raise InputError(f"--backend {backend} needs an export", None,
                         "pass --export DIR (made by `vita-deploy export`)")
    cfg = ModelConfig.from_dict(load_manifest(export)["config"])
    if backend == "onnxruntime":
        from vita_deploy.runtime.ort_export import ort_graphs
        return (*ort_graphs(export, device=device), cfg)
    from vita_deploy.runtime import tensorrt_graphs
    return (*tensorrt_graphs(export, device=device), cfg)


def backend_mask_features(backend: str, export: str, device: str):
    """The export's mask-feature graph (MaskFeaturesFn) on ONNX Runtime or TensorRT, None if it has none."""
    if backend == "onnxruntime":
        from vita_deploy.runtime.ort_export import ort_mask_features
        return ort_mask_features(export, device=device)
    from vita_deploy.runtime import tensorrt_mask_features
    return tensorrt_mask_features(export, device=device)


def infer_file(video: str | Path, model: VitaModel | None, device: str = "cpu", amp: bool = False,
               progress: bool = True, backend: str = "torch", export: str | None = None, features: str = "auto",
               spill_dir: str | None = None, host_budget_mb: float | None = None,
               sink: FrameSink | None = None) -> VideoPrediction:
    """Whole-video inference on the eager model (backend "torch") or an export (onnxruntime, tensorrt).
    features: "auto" | "keep" | "recompute"; sink: e.g. a VideoRenderer (see `run_video`)."""
    source = open_video(video)
    if backend == "torch":
        model = model.to(device)
        detector, vita = eager_graphs(model, amp=amp)
        mask_features = eager_mask_features(model, amp=amp)
        cfg = model.cfg
    else:
        detector, vita, cfg = backend_graphs(backend, export, device)
        mask_features = backend_mask_features(backend, export, device) if features != "keep" else None
        if features == "recompute" and mask_features is None:
            raise InputError(f"--features recompute needs the mask-feature graph, which {export} does not have: "
                             "re-export with `vita-deploy export` (it writes mask_features.onnx)")
    start = time.perf_counter()
    pred = run_video(source, detector, vita, cfg, mask_features=mask_features, features=features, device=device,
                     num_frames=source.num_frames, progress=progress, spill_dir=spill_dir,
                     host_budget_mb=host_budget_mb, sink=sink)
    pred.timings["total_s"] = time.perf_counter() - start
    return pred
