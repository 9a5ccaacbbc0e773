"""TensorRT engine execution: runs only where datacenter TensorRT (or TensorRT-RTX on a supported GPU) and a
CUDA GPU are present; on this project's machines it is skipped with the reason."""
from __future__ import annotations

import pytest
import torch


def _tensorrt_can_execute() -> str | None:
    if not torch.cuda.is_available():
        return "no CUDA GPU is visible: TensorRT engines cannot execute on this machine"
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return ("datacenter TensorRT (`import tensorrt`) is not installed; it cannot be installed on this "
                "project's machines (PyPI has only stubs), and TensorRT-RTX does not run on their SM90 GPU")
    return None


REASON = _tensorrt_can_execute()


@pytest.mark.skipif(REASON is not None, reason=REASON or "")
def test_tensorrt_engines_match_eager(tmp_path):
    from test_export import exported, random_model
    from vita_deploy.commands import verify
    from vita_deploy.engines.manifest import build_from_manifest
    from vita_deploy.modeling.checkpoint import save_checkpoint

    export = exported("tiny")
    build_from_manifest(export / "manifest.json")  # engines next to the ONNX files, as the runtime expects
    ckpt = save_checkpoint(tmp_path / "tiny.pth", random_model("tiny"))
    assert verify.main(["--export", str(export), "--backend", "tensorrt", "--checkpoint", str(ckpt),
                        "--device", "cuda"]) == 0
