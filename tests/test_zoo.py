"""The official model zoo: configs from the official yamls, checkpoint detection and refusal, OVIS top-20."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from official_r50_keys import official_r50_keys
from official_zoo_keys import SWIN_L, official_keys, swin_backbone_keys
from vita_deploy.config import (OVIS_CLASSES, YTVIS_2019_CLASSES, YTVIS_2021_CLASSES, ModelConfig, SwinConfig,
                                config_names, get_config)
from vita_deploy.pipeline.inference import eager_graphs, run_video
from vita_deploy.modeling.checkpoint import (CheckpointError, import_official_state_dict, load_checkpoint,
                                             matching_zoo_configs, to_official_key)
from vita_deploy.modeling.model import build_model

ZOO = ("r50-ytvis19", "r50-ytvis21", "r50-ovis", "r101-ytvis19", "r101-ytvis21", "swinl-ytvis19", "swinl-ytvis21",
       "swinl-ovis")


def test_config_names_and_official_settings():
    assert set(config_names()) == {*ZOO, "tiny", "r50"}
    assert get_config("r50") == get_config("r50-ytvis19") and get_config("r50").name == "r50-ytvis19"
    for name in ZOO:
        cfg = get_config(name)
        backbone, dataset = name.split("-")
        assert cfg.name == name and ModelConfig.from_dict(cfg.to_dict()) == cfg
        swin = backbone == "swinl"
        assert isinstance(cfg.backbone, SwinConfig) == swin
        # MASK_FORMER.NUM_OBJECT_QUERIES / INPUT.MIN_SIZE_TEST / TEST.DETECTIONS_PER_IMAGE of the yamls
        assert cfg.frame_decoder.num_queries == (200 if swin else 100) and cfg.vita.num_queries == 100
        assert (cfg.input.min_size_test, cfg.input.max_size_test) == ((448 if swin else 360), 1333)
        assert cfg.inference.topk == (20 if dataset == "ovis" else 10)
        names = {"ytvis19": YTVIS_2019_CLASSES, "ytvis21": YTVIS_2021_CLASSES, "ovis": OVIS_CLASSES}[dataset]
        assert cfg.class_names == names and cfg.num_classes == len(names)
        # INPUT.SAMPLING_FRAME_NUM / RANGE and SOLVER of the yamls
        t = cfg.train
        assert (t.sampling_frame_num, t.sampling_frame_range) == ((5, 20) if dataset == "ytvis19" else (6, 8))
        assert (t.max_iter, t.steps) == {"ytvis19": (140000, (75000,)), "ytvis21": (187500, (100000,)),
                                         "ovis": (150000, (50000, 125000))}[dataset]
        assert (t.ims_per_batch, t.base_lr, t.backbone_multiplier) == (8, 5e-5, 0.1)
    assert get_config("r101-ytvis19").backbone.blocks_per_stage == (3, 4, 23, 3)
    b = get_config("swinl-ovis").backbone
    assert (b.embed_dim, b.depths, b.num_heads, b.window_size) == tuple(SWIN_L.values())
    # Names in dataset-id order (YouTube-VIS 2021 is sorted; 2019 and OVIS are not).
    assert len(YTVIS_2021_CLASSES) == 40 and list(YTVIS_2021_CLASSES) == sorted(YTVIS_2021_CLASSES)
    assert YTVIS_2019_CLASSES[:3] == ("person", "giant_panda", "lizard") and OVIS_CLASSES[-1] == "Vehical"
    # a file written when r50-ytvis19 was called "r50" still loads as r50-ytvis19
    old = {**get_config("r50").to_dict(), "name": "r50"}
    old["backbone"].pop("kind")
    assert ModelConfig.from_dict(old) == get_config("r50-ytvis19")


def _meta_state(backbone: str, num_classes: int) -> dict[str, torch.Tensor]:
    return {k: torch.empty(shape, device="meta") for k, shape in official_keys(backbone, num_classes).items()}


def test_checkpoints_identify_their_config():
    assert matching_zoo_configs(_meta_state("swinl", 25)) == ["swinl-ovis"]
    assert matching_zoo_configs(_meta_state("r101", 40)) == ["r101-ytvis19", "r101-ytvis21"]
    assert matching_zoo_configs(_meta_state("r50", 25)) == ["r50-ovis"]
    assert matching_zoo_configs({"backbone.stem.conv1.weight": torch.zeros(1)}) == []


@pytest.fixture(scope="module")
def r50_model():
    return build_model(get_config("r50-ytvis19"))


def test_checkpoint_of_another_config_is_refused_by_name(r50_model):
    with pytest.raises(CheckpointError) as err:
        import_official_state_dict(r50_model, _meta_state("swinl", 25), "swin_ovis.pth")
    msg = str(err.value)
    assert "this checkpoint is a swinl-ovis checkpoint: pass --config swinl-ovis" in msg
    assert "backbone.patch_embed.proj.weight" in msg and "backbone.stem.conv1.weight" in msg  # keys still listed
    with pytest.raises(CheckpointError, match="this checkpoint is a r101-ytvis19 or r101-ytvis21 checkpoint"):
        import_official_state_dict(r50_model, _meta_state("r101", 40))


def test_ovis_checkpoint_file_detected_refused_and_top20(tmp_path, r50_model):
    """An R-50 OVIS model_final.pth: refused as r50-ytvis19 (naming r50-ovis), loaded without --config as
    r50-ovis, and its top-20 (TEST.DETECTIONS_PER_IMAGE 20) flows through run_video."""
    g = torch.Generator().manual_seed(0)
    keys = official_r50_keys()
    keys.update({k: v for k, v in official_keys("r50", 25).items() if "class_embed" in k})
    state = {k: torch.randn(shape, generator=g) * 0.02 for k, shape in keys.items()}
    path = tmp_path / "model_final.pth"
    torch.save({"model": state, "iteration": 150000}, path)
    with pytest.raises(CheckpointError, match="this checkpoint is a r50-ovis checkpoint: pass --config r50-ovis"):
        load_checkpoint(path, get_config("r50"))
    model, _ = load_checkpoint(path)  # identified from the shapes
    assert model.cfg.name == "r50-ovis" and model.cfg.inference.topk == 20
    torch.testing.assert_close(model.state_dict()["vita_head.class_embed.weight"], state["vita_module.class_embed.weight"])
    state40 = {**state, **{k: torch.zeros(shape) for k, shape in official_keys("r50", 40).items() if "class_embed" in k}}
    torch.save(state40, path)  # a bare state dict (no "model" wrapper); 40 classes: 2019 or 2021?
    with pytest.raises(CheckpointError, match="pass --config r50-ytvis19 or --config r50-ytvis21"):
        load_checkpoint(path)


def test_ovis_top20_through_run_video():
    """A narrow model with the OVIS head and inference settings: run_video keeps 20 instances, labelled with
    OVIS category ids 1..25."""
    ovis = get_config("swinl-ovis")
    cfg = replace(get_config("tiny"), name="tiny-ovis", num_classes=25, class_names=ovis.class_names,
                  inference=ovis.inference)
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 255, (70, 90, 3), dtype=np.uint8) for _ in range(4)]
    pred = run_video(frames, *eager_graphs(model), cfg)
    assert len(pred.scores) == 20 and all(len(s) == 4 for s in pred.segmentations)
    results = pred.to_ytvis(video_id=3)
    assert len(results) == 20 and all(1 <= r["category_id"] <= 25 for r in results)


def test_narrow_swin_official_import_round_trip(tmp_path):
    """A Swin model's weights under the official names in a detectron2-style file load back exactly."""
    cfg = replace(get_config("tiny"), name="tiny-swin",
                  backbone=SwinConfig(embed_dim=16, depths=(2, 2, 2, 2), num_heads=(2, 2, 4, 4), window_size=7))
    torch.manual_seed(1)
    src = build_model(cfg)
    official = {to_official_key(k): v.clone() for k, v in src.state_dict().items()}
    expected = {k: v for k, v in swin_backbone_keys(16, (2, 2, 2, 2), (2, 2, 4, 4), 7).items()}
    assert {k: tuple(v.shape) for k, v in official.items() if k.startswith("backbone.")} == expected
    official["criterion.empty_weight"] = torch.ones(6)
    path = tmp_path / "model_final.pth"
    torch.save({"model": official}, path)
    torch.manual_seed(2)
    loaded, _ = load_checkpoint(path, cfg)
    for k, v in src.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[k], v, rtol=0, atol=0)
    images = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        torch.testing.assert_close(loaded.frame_detector(images)[0], src.eval().frame_detector(images)[0])


def test_swin_position_tables_have_no_weight_decay():
    """As the official optimizer: relative position bias tables (and absolute_pos_embed) take no weight decay."""
    from vita_deploy.training.trainer import TrainConfig, build_optimizer

    cfg = replace(get_config("tiny"), name="tiny-swin",
                  backbone=SwinConfig(embed_dim=16, depths=(2, 2, 2, 2), num_heads=(2, 2, 4, 4), window_size=7))
    model = build_model(cfg)
    opt = build_optimizer(model, TrainConfig(data="unused", out="unused"))
    decay = {id(p): g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    tables = [p for n, p in model.named_parameters() if n.endswith("relative_position_bias_table")]
    assert len(tables) == 8 and all(decay[id(p)] == 0.0 for p in tables)
    assert decay[id(model.frame_detector.backbone.layers[0].blocks[0].attn.qkv.weight)] == 0.05
