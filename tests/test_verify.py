"""`vita-deploy verify`: parity table of an ONNX export against the eager model, and its refusals."""
from __future__ import annotations

import json

from test_export import exported, random_model
from vita_deploy.commands import verify
from vita_deploy.data.synthetic import generate_split
from vita_deploy.modeling.checkpoint import save_checkpoint


def test_verify_onnxruntime_passes_on_a_faithful_export(tmp_path, capsys):
    ckpt = save_checkpoint(tmp_path / "tiny.pth", random_model("tiny"))
    generate_split(tmp_path / "data", "valid", 2, seed=5, min_frames=6, max_frames=8, progress=False)
    report = tmp_path / "report.json"
    rc = verify.main(["--export", str(exported("tiny")), "--backend", "onnxruntime", "--checkpoint", str(ckpt),
                      "--videos", str(tmp_path / "data"), "--device", "cpu", "--report", str(report)])
    out = capsys.readouterr().out
    assert rc == 0, out
    data = json.loads(report.read_text())
    assert all(r["rel"] < verify.THRESHOLDS["fp32"]["tensor_rel"] for r in data["tensors"].values())
    assert data["video"]["min_matched_iou"] >= 0.99 and abs(data["video"]["delta_ap"]) <= 0.1
    assert "PASS" in out


def test_verify_refuses_other_weights(tmp_path, capsys):
    """An export records the hash of the checkpoint it was made from; verifying with other weights is refused."""
    import shutil
    export = tmp_path / "export"
    shutil.copytree(exported("tiny"), export)
    manifest = json.loads((export / "manifest.json").read_text())
    manifest["checkpoint_sha256"] = "0" * 64
    (export / "manifest.json").write_text(json.dumps(manifest))
    ckpt = save_checkpoint(tmp_path / "other.pth", random_model("tiny"))
    assert verify.main(["--export", str(export), "--checkpoint", str(ckpt), "--device", "cpu"]) == 2
    assert "is not the checkpoint" in capsys.readouterr().err


def test_infer_cli_on_the_onnxruntime_backend(tmp_path, capsys):
    """`python -m vita_deploy.commands.infer VIDEO --backend onnxruntime --export DIR` gives the eager result."""
    import cv2
    import numpy as np

    from vita_deploy.commands import infer
    rng = np.random.default_rng(0)
    folder = tmp_path / "frames"
    folder.mkdir()
    for i in range(5):
        cv2.imwrite(str(folder / f"{i:05d}.png"), rng.integers(0, 255, (64, 96, 3), dtype=np.uint8))
    ckpt = save_checkpoint(tmp_path / "tiny.pth", random_model("tiny"))
    assert infer.main([str(folder), "--checkpoint", str(ckpt), "--json", str(tmp_path / "eager.json"),
                       "--device", "cpu"]) == 0
    assert infer.main([str(folder), "--backend", "onnxruntime", "--export", str(exported("tiny")), "--json",
                       str(tmp_path / "ort.json"), "--out", str(tmp_path / "ort.mp4"), "--device", "cpu"]) == 0
    eager, ort = (json.loads((tmp_path / f).read_text()) for f in ("eager.json", "ort.json"))
    assert [r["category_id"] for r in eager] == [r["category_id"] for r in ort]
    assert all(abs(a["score"] - b["score"]) < 1e-4 for a, b in zip(eager, ort))
    assert (tmp_path / "ort.mp4").stat().st_size > 1000
    assert infer.main([str(folder), "--backend", "onnxruntime", "--device", "cpu"]) == 2
    assert "needs --export" in capsys.readouterr().err


def test_verify_finds_the_weights_of_the_export(tmp_path, capsys):
    """Without --checkpoint, verify compares against the weights the export was made from: an export of random
    weights (manifest checkpoint null) against the same seed-0 random weights, not the shipped tiny checkpoint; an
    export whose checkpoint file is gone is refused naming it (exit 2)."""
    from vita_deploy.export.onnx_export import ExportOptions, export_model
    from vita_deploy.loading import random_weights

    export = tmp_path / "random"
    export_model(random_weights("tiny"), export, ExportOptions(deform_attn="native", height=64, width=96,
                                                               max_frames=8, max_batch=2),
                 graphs=("frame_detector", "vita_head"))
    assert json.loads((export / "manifest.json").read_text())["checkpoint"] is None
    assert verify.main(["--export", str(export), "--device", "cpu", "--chunk-size", "2"]) == 0
    out = capsys.readouterr().out
    assert "exported without a checkpoint" in out and "PASS" in out
    assert "frame_detector N=2 " in out  # the batch check at --chunk-size
    assert verify.main(["--export", str(export), "--device", "cpu", "--chunk-size", "3"]) == 2
    assert "--chunk-size 3 is more than the export's detector takes (2 frames)" in capsys.readouterr().err
    manifest = json.loads((export / "manifest.json").read_text())
    manifest.update(checkpoint=str(tmp_path / "gone.pth"), checkpoint_sha256="0" * 64)
    (export / "manifest.json").write_text(json.dumps(manifest))
    assert verify.main(["--export", str(export), "--device", "cpu"]) == 2
    assert f"was exported from is not here ({tmp_path / 'gone.pth'}): pass --checkpoint" in capsys.readouterr().err


def test_verify_compares_masks_when_the_classes_differ(tmp_path, capsys):
    """A model whose classes are not the dataset's categories (a zoo model on the synthetic set) gets no AP, but its
    masks are still matched and compared (before, labels indexed past the category list: IndexError)."""
    ckpt = save_checkpoint(tmp_path / "tiny.pth", random_model("tiny"))
    generate_split(tmp_path / "data", "valid", 2, seed=5, min_frames=6, max_frames=8, progress=False)
    gt = json.loads((tmp_path / "data" / "valid.json").read_text())
    gt["categories"] = gt["categories"][:1]
    gt["annotations"] = [x for x in gt["annotations"] if x["category_id"] == gt["categories"][0]["id"]]
    (tmp_path / "data" / "valid.json").write_text(json.dumps(gt))
    report = tmp_path / "report.json"
    rc = verify.main(["--export", str(exported("tiny")), "--checkpoint", str(ckpt), "--videos", str(tmp_path / "data"),
                      "--device", "cpu", "--report", str(report)])
    captured = capsys.readouterr()
    out = captured.out
    assert rc == 0, out + captured.err
    assert "AP not computed: the model has" in out and "has 1 categories" in out
    video = json.loads(report.read_text())["video"]
    assert "ap_eager" not in video and video["instances"] > 0 and video["min_matched_iou"] >= 0.99
