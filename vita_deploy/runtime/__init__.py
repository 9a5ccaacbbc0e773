"""Runtime backends behind one `Engine` interface: eager PyTorch, ONNX Runtime, TensorRT."""
from vita_deploy.runtime.base import Engine, RuntimeMismatchError, TensorSpec, graphs_from_engines

__all__ = ["Engine", "RuntimeMismatchError", "TensorSpec", "graphs_from_engines"]


def tensorrt_graphs(export_dir, device="cuda", use_cuda_graph: bool = False):
    """(DetectorFn, VitaFn) from the engines built next to an export's ONNX files (`vita-deploy build
    --manifest`), after checking that each engine was built from the ONNX the manifest names."""
    engines = _tensorrt_engines(export_dir, ("frame_detector", "vita_head"), use_cuda_graph)
    return graphs_from_engines(engines["frame_detector"], engines["vita_head"])


def tensorrt_mask_features(export_dir, device="cuda"):
    """MaskFeaturesFn of the export's mask-feature engine (recompute mode), or None when the export has no
    mask_features graph."""
    from vita_deploy.export.onnx_export import load_manifest
    from vita_deploy.runtime.base import mask_features_from_engine

    if "mask_features" not in load_manifest(export_dir)["graphs"]:
        return None
    return mask_features_from_engine(_tensorrt_engines(export_dir, ("mask_features",))["mask_features"])


def _tensorrt_engines(export_dir, graphs, use_cuda_graph: bool = False):
    """{graph: TensorRTEngine} for `graphs` of an export, each checked against the ONNX its manifest names."""
    import json
    from pathlib import Path

    from vita_deploy.export.onnx_export import load_manifest
    from vita_deploy.runtime.tensorrt_engine import TensorRTEngine

    manifest = load_manifest(export_dir)
    engines = {}
    for graph, info in manifest["graphs"].items():
        if graph not in graphs:
            continue
        engine = Path(export_dir) / (Path(info["file"]).stem + ".engine")
        sidecar = engine.with_suffix(".engine.json")
        if sidecar.is_file() and json.loads(sidecar.read_text()).get("onnx_sha256") != info["sha256"]:
            raise RuntimeMismatchError(f"{engine} was built from a different {info['file']} than this export's: "
                                       f"rebuild with `vita-deploy build --manifest {Path(export_dir) / 'manifest.json'}`")
        engines[graph] = TensorRTEngine(engine, use_cuda_graph=use_cuda_graph)
    return engines
