"""Checkpoint round trips and the import of official VITA R-50 weights."""
from __future__ import annotations

import pytest
import torch

from official_r50_keys import official_r50_keys
from vita_deploy.config import get_config
from vita_deploy.modeling.checkpoint import (CheckpointError, import_official_state_dict, load_checkpoint,
                                             save_checkpoint)
from vita_deploy.modeling.model import build_model


@pytest.fixture(scope="module")
def official_state():
    g = torch.Generator().manual_seed(0)
    state = {k: torch.randn(shape, generator=g) for k, shape in official_r50_keys().items()}
    state["criterion.empty_weight"] = torch.ones(41)
    state["vita_criterion.empty_weight"] = torch.ones(41)
    state["backbone.res2.0.conv1.norm.num_batches_tracked"] = torch.tensor(0)
    return state


@pytest.fixture(scope="module")
def r50():
    return build_model(get_config("r50"))


def test_official_import_round_trip(official_state, r50, tmp_path):
    report = import_official_state_dict(r50, official_state)
    assert set(report["ignored"]) == {"criterion.empty_weight", "vita_criterion.empty_weight",
                                      "backbone.res2.0.conv1.norm.num_batches_tracked"}
    sd = r50.state_dict()
    torch.testing.assert_close(sd["vita_head.fq_pos.weight"], official_state["vita_module.fq_pos.weight"])
    torch.testing.assert_close(sd["frame_detector.vita_mask_features.weight"],
                               official_state["vita_module.vita_mask_features.weight"])
    torch.testing.assert_close(sd["frame_detector.predictor.query_feat.weight"],
                               official_state["sem_seg_head.predictor.query_feat.weight"])
    # detectron2-format file {"model": ...} loads through load_checkpoint with the r50 config.
    path = tmp_path / "model_final.pth"
    torch.save({"model": official_state, "iteration": 1}, path)
    model, _ = load_checkpoint(path, get_config("r50"))
    torch.testing.assert_close(model.state_dict()["frame_detector.backbone.stem.conv1.weight"],
                               official_state["backbone.stem.conv1.weight"])


def test_official_import_names_every_problem(official_state, r50):
    state = dict(official_state)
    del state["vita_module.fq_pos.weight"]
    state["vita_module.extra_head.weight"] = torch.zeros(3)
    state["sem_seg_head.predictor.class_embed.weight"] = torch.zeros(26, 256)  # 25 classes, not 40
    with pytest.raises(CheckpointError) as err:
        import_official_state_dict(r50, state, "bad.pth")
    msg = str(err.value)
    assert "vita_module.fq_pos.weight" in msg and "vita_module.extra_head.weight" in msg
    assert "sem_seg_head.predictor.class_embed.weight: checkpoint (26, 256) vs model (41, 256)" in msg


def test_own_checkpoint_round_trip(tmp_path):
    model = build_model(get_config("tiny"))
    path = save_checkpoint(tmp_path / "ckpt" / "tiny.pth", model, step=5)
    assert not list(path.parent.glob("*.tmp"))
    loaded, data = load_checkpoint(path)
    assert data["step"] == 5 and loaded.cfg == model.cfg
    for k, v in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[k], v)


def test_corrupt_and_missing_checkpoints(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pth")
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"\x00garbage")
    with pytest.raises(CheckpointError, match="weights_only"):
        load_checkpoint(bad)
    tiny_file = tmp_path / "tiny.pth"
    save_checkpoint(tiny_file, build_model(get_config("tiny")))
    with pytest.raises(CheckpointError, match="does not match the 'r50-ytvis19' model"):
        import_official_state_dict(build_model(get_config("r50")), torch.load(tiny_file)["model"])
