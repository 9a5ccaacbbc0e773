"""`train --init WEIGHTS`: each weight source, written by the test in its real format at the tiny config's shapes
(official VITA model_final.pth, detectron2 Mask2Former .pkl, torchvision ResNet, MSRA R-50.pkl, Swin ImageNet),
the restricted unpickler refusing a malicious pickle, class-head re-initialisation and the key-by-key report."""
from __future__ import annotations

import json
import os
import pickle
from dataclasses import replace

import numpy as np
import pytest
import torch

from vita_deploy.config import SwinConfig, get_config
from vita_deploy.data.synthetic import generate_split
from vita_deploy.modeling.checkpoint import CheckpointError, to_official_key
from vita_deploy.modeling.model import build_model
from vita_deploy.modeling.pretrained import init_from_weights, restricted_pickle_load

TINY = get_config("tiny")  # ResNet blocks (1, 1, 1, 1), stem 16, res2 32, bottleneck ratio 4; 5 classes


def fresh(cfg=TINY, seed=1):
    torch.manual_seed(seed)
    return build_model(cfg)


def source_model(cfg=TINY, seed=0):
    """A model with weights unlike `fresh`'s, whose tensors the tests write out in each format."""
    torch.manual_seed(seed)
    model = build_model(cfg)
    with torch.no_grad():
        for t in model.state_dict().values():
            if t.is_floating_point():
                t.add_(torch.rand_like(t))  # also moves the frozen-BN buffers away from their init
    return model


def official_state(model) -> dict[str, torch.Tensor]:
    return {to_official_key(k): v.clone() for k, v in model.state_dict().items()}


def test_official_vita_checkpoint_same_classes_loads_everything(tmp_path):
    src = source_model()
    path = tmp_path / "model_final.pth"
    torch.save({"model": {**official_state(src), "criterion.empty_weight": torch.ones(6)}, "iteration": 9}, path)
    model = fresh()
    report = init_from_weights(model, path)
    assert report.source == "vita"
    assert not report.reinitialised and not report.left_random and report.unused == ["criterion.empty_weight"]
    for key, value in src.state_dict().items():
        torch.testing.assert_close(model.state_dict()[key], value, rtol=0, atol=0)


def test_official_vita_checkpoint_other_classes_reinitialises_the_class_heads(tmp_path):
    src = source_model()
    path = tmp_path / "model_final.pth"
    torch.save({"model": official_state(src)}, path)
    model = fresh(TINY.with_num_classes(2))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    report = init_from_weights(model, path)
    assert sorted(report.reinitialised) == ["frame_detector.predictor.class_embed.bias",
                                            "frame_detector.predictor.class_embed.weight",
                                            "vita_head.class_embed.bias", "vita_head.class_embed.weight"]
    for key in report.reinitialised:  # untouched: the fresh model's initialisation
        assert torch.equal(model.state_dict()[key], before[key])
    assert len(report.loaded) == len(before) - 4
    torch.testing.assert_close(model.state_dict()["vita_head.query_feat.weight"],
                               src.state_dict()["vita_head.query_feat.weight"], rtol=0, atol=0)


def mask2former_pkl(path, src, num_coco_classes=80):
    """detectron2's Mask2Former COCO instance checkpoint: {'model': {name: numpy}, '__author__', ...}."""
    state = {k: v.numpy() for k, v in official_state(src).items()
             if not k.startswith("vita_module.")}
    hidden = src.cfg.frame_decoder.hidden_dim
    state["sem_seg_head.predictor.class_embed.weight"] = np.random.rand(num_coco_classes + 1, hidden).astype("f4")
    state["sem_seg_head.predictor.class_embed.bias"] = np.random.rand(num_coco_classes + 1).astype("f4")
    state["backbone.res2.0.conv1.norm.num_batches_tracked"] = np.array(7)
    with open(path, "wb") as f:
        pickle.dump({"model": state, "__author__": "https://github.com/facebookresearch/Mask2Former",
                     "matching_heuristics": True}, f, protocol=2)


def test_mask2former_pkl(tmp_path):
    src = source_model()
    path = tmp_path / "model_final_3c3198.pkl"
    mask2former_pkl(path, src)
    model = fresh()
    report = init_from_weights(model, path)
    assert report.source == "mask2former"
    assert sorted(report.reinitialised) == ["frame_detector.predictor.class_embed.bias",
                                            "frame_detector.predictor.class_embed.weight"]
    # VITA's head and vita_mask_features are not in Mask2Former; the class heads: COCO's 81 logits vs our 6
    assert all(k.startswith(("vita_head.", "frame_detector.vita_mask_features.")) for k in report.left_random)
    assert "vita_head.class_embed.weight" in report.left_random
    for key in report.loaded:
        torch.testing.assert_close(model.state_dict()[key], src.state_dict()[key], rtol=0, atol=0)
    assert any(k.startswith("frame_detector.pixel_decoder.") for k in report.loaded)
    assert "backbone.res2.0.conv1.norm.num_batches_tracked" in report.unused


class Malicious:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_restricted_unpickler_refuses_other_objects(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.pkl"
    with open(path, "wb") as f:
        pickle.dump({"model": {"backbone.stem.conv1.weight": Malicious()}}, f, protocol=2)
    with pytest.raises(CheckpointError, match=r"(posix|os|nt)\.system.*refused") as e:
        init_from_weights(fresh(), path)
    assert str(path) in str(e.value)
    assert not (tmp_path / "pwned").exists()
    with open(path, "wb") as f:  # a numpy array of Python objects is refused as well
        pickle.dump({"model": {"x": np.array([Malicious()], dtype=object)}}, f, protocol=2)
    with pytest.raises(CheckpointError, match="refused"):
        restricted_pickle_load(path)
    assert not (tmp_path / "pwned").exists()


def resnet_shapes(cfg=TINY):
    """(stage, block) -> channels of the tiny ResNet, written out as torchvision/MSRA files lay them out."""
    b = cfg.backbone
    stages, cin = [], b.stem_channels
    for i, n in enumerate(b.blocks_per_stage):
        cout = b.res2_channels * 2**i
        for j in range(n):
            stages.append((i, j, cin, cout // b.bottleneck_ratio, cout))
            cin = cout
    return b.stem_channels, stages


def test_torchvision_resnet_state_dict(tmp_path):
    stem, blocks = resnet_shapes()
    g = torch.Generator().manual_seed(3)

    def bn(prefix, c):
        return {f"{prefix}.weight": torch.rand(c, generator=g), f"{prefix}.bias": torch.rand(c, generator=g),
                f"{prefix}.running_mean": torch.rand(c, generator=g), f"{prefix}.running_var": torch.rand(c, generator=g),
                f"{prefix}.num_batches_tracked": torch.tensor(5)}

    sd = {"conv1.weight": torch.rand(stem, 3, 7, 7, generator=g), **bn("bn1", stem)}
    for i, j, cin, mid, cout in blocks:
        p = f"layer{i + 1}.{j}"
        sd[f"{p}.conv1.weight"] = torch.rand(mid, cin, 1, 1, generator=g)
        sd[f"{p}.conv2.weight"] = torch.rand(mid, mid, 3, 3, generator=g)
        sd[f"{p}.conv3.weight"] = torch.rand(cout, mid, 1, 1, generator=g)
        sd.update(bn(f"{p}.bn1", mid) | bn(f"{p}.bn2", mid) | bn(f"{p}.bn3", cout))
        if j == 0:
            sd[f"{p}.downsample.0.weight"] = torch.rand(cout, cin, 1, 1, generator=g)
            sd.update(bn(f"{p}.downsample.1", cout))
    sd["fc.weight"], sd["fc.bias"] = torch.rand(1000, blocks[-1][-1]), torch.rand(1000)
    path = tmp_path / "resnet50-0676ba61.pth"
    torch.save(sd, path)
    model = fresh()
    report = init_from_weights(model, path)
    assert report.source == "torchvision-resnet"
    ours = model.state_dict()
    backbone = [k for k in ours if k.startswith("frame_detector.backbone.")]
    assert sorted(report.loaded) == sorted(backbone)
    assert not report.reinitialised and all(not k.startswith("frame_detector.backbone.") for k in report.left_random)
    assert set(report.unused) == {"fc.weight", "fc.bias"} | {k for k in sd if k.endswith("num_batches_tracked")}
    b = "frame_detector.backbone."
    assert torch.equal(ours[b + "stem.conv1.norm.running_var"], sd["bn1.running_var"])
    assert torch.equal(ours[b + "res3.0.conv2.norm.running_mean"], sd["layer2.0.bn2.running_mean"])
    assert torch.equal(ours[b + "res5.0.shortcut.norm.weight"], sd["layer4.0.downsample.1.weight"])
    assert torch.equal(ours[b + "res4.0.shortcut.weight"], sd["layer3.0.downsample.0.weight"])


def test_msra_r50_pkl(tmp_path):
    stem, blocks = resnet_shapes()
    rng = np.random.default_rng(4)

    def arr(*shape):
        return rng.random(shape, dtype=np.float32)

    blobs = {"conv1_w": arr(stem, 3, 7, 7), "res_conv1_bn_s": arr(stem), "res_conv1_bn_b": arr(stem),
             "fc1000_w": arr(1000, blocks[-1][-1]), "fc1000_b": arr(1000)}
    for i, j, cin, mid, cout in blocks:
        p = f"res{i + 2}_{j}"
        for branch, shape in (("branch2a", (mid, cin, 1, 1)), ("branch2b", (mid, mid, 3, 3)),
                              ("branch2c", (cout, mid, 1, 1))) + ((("branch1", (cout, cin, 1, 1)),) if j == 0 else ()):
            blobs[f"{p}_{branch}_w"] = arr(*shape)
            blobs[f"{p}_{branch}_bn_s"] = arr(shape[0])
            blobs[f"{p}_{branch}_bn_b"] = arr(shape[0])
    blobs["res2_0_branch2a_w_momentum"] = arr(*blobs["res2_0_branch2a_w"].shape)
    path = tmp_path / "R-50.pkl"
    with open(path, "wb") as f:
        pickle.dump({"blobs": blobs}, f, protocol=2)
    model = fresh()
    report = init_from_weights(model, path)
    assert report.source == "msra-resnet" and any("stride" in n for n in report.notes)
    ours = model.state_dict()
    b = "frame_detector.backbone."
    assert sorted(report.loaded) == sorted(k for k in ours if k.startswith(b))
    np.testing.assert_array_equal(ours[b + "stem.conv1.norm.weight"].numpy(), blobs["res_conv1_bn_s"])
    # MSRA input is BGR minus the mean (std 1); ours RGB / pixel_std: same first-layer output on any image
    rgb = torch.rand(1, 3, 9, 9, dtype=torch.float64) * 255
    mean = torch.tensor(TINY.input.pixel_mean, dtype=torch.float64).view(1, 3, 1, 1)
    std = torch.tensor(TINY.input.pixel_std, dtype=torch.float64).view(1, 3, 1, 1)
    theirs = torch.nn.functional.conv2d((rgb - mean).flip(1), torch.from_numpy(blobs["conv1_w"]).double())
    mine = torch.nn.functional.conv2d((rgb - mean) / std, ours[b + "stem.conv1.weight"].double())
    torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-4)
    np.testing.assert_array_equal(ours[b + "res3.0.conv1.weight"].numpy(), blobs["res3_0_branch2a_w"])
    np.testing.assert_array_equal(ours[b + "res5.0.shortcut.norm.bias"].numpy(), blobs["res5_0_branch1_bn_b"])
    np.testing.assert_array_equal(ours[b + "res4.0.conv3.norm.weight"].numpy(), blobs["res4_0_branch2c_bn_s"])
    assert torch.equal(ours[b + "res2.0.conv2.norm.running_mean"], torch.zeros(blocks[0][3]))  # folded BN
    assert set(report.unused) == {"fc1000_w", "fc1000_b", "res2_0_branch2a_w_momentum"}


def test_swin_imagenet_weights(tmp_path):
    narrow = SwinConfig(embed_dim=16, depths=(2, 2, 2, 2), num_heads=(2, 2, 4, 4), window_size=7)
    cfg = replace(TINY, name="tiny-swin", backbone=narrow)
    src = source_model(cfg)
    # The official Swin file: the backbone without Mask2Former's output norms, plus the final norm, the
    # classifier and the shifted blocks' attn_mask buffers.
    sd = {k[len("frame_detector.backbone."):]: v for k, v in src.state_dict().items()
          if k.startswith("frame_detector.backbone.") and not k.startswith("frame_detector.backbone.norm")}
    sd.update({"norm.weight": torch.ones(128), "norm.bias": torch.zeros(128), "head.weight": torch.rand(21841, 128),
               "head.bias": torch.rand(21841), "layers.0.blocks.1.attn_mask": torch.zeros(4, 49, 49)})
    path = tmp_path / "swin_large_patch4_window12_384_22k.pth"
    torch.save({"model": sd}, path)
    model = fresh(cfg)
    report = init_from_weights(model, path)
    assert report.source == "swin"
    assert {k for k in report.left_random if k.startswith("frame_detector.backbone.")} == {
        f"frame_detector.backbone.norm{i}.{p}" for i in range(4) for p in ("weight", "bias")}
    assert set(report.unused) == {"norm.weight", "norm.bias", "head.weight", "head.bias",
                                  "layers.0.blocks.1.attn_mask"}
    key = "frame_detector.backbone.layers.2.blocks.1.attn.relative_position_bias_table"
    assert torch.equal(model.state_dict()[key], src.state_dict()[key])


def test_weights_of_another_architecture_are_refused(tmp_path):
    src = source_model(replace(TINY, name="wider", backbone=replace(TINY.backbone, stem_channels=8)))
    path = tmp_path / "model_final.pth"
    torch.save({"model": official_state(src)}, path)
    with pytest.raises(CheckpointError, match=r"stem\.conv1\.weight.*\n.*|--config"):
        init_from_weights(fresh(), path)


def test_train_cli_init_writes_the_report_and_resume_suggests_init(tmp_path, capsys):
    from vita_deploy.commands import train

    data = tmp_path / "data"
    generate_split(data, "train", 2, seed=5, min_frames=3, max_frames=4, progress=False)
    src = fresh(seed=0)  # trainable weights (source_model's perturbed BN statistics diverge)
    weights = tmp_path / "model_final.pth"
    torch.save({"model": official_state(src)}, weights)
    common = ["--data", str(data), "--config", "tiny", "--iters", "1", "--batch-size", "1", "--num-frames", "2",
              "--num-points", "64", "--eval-every", "0", "--workers", "0", "--device", "cpu"]
    assert train.main(common + ["--out", str(tmp_path / "run"), "--init", str(weights)]) == 0
    out = capsys.readouterr().out
    report = json.loads((tmp_path / "run" / "init_report.json").read_text())
    n = report["counts"]
    assert f"{n['loaded']} tensors loaded, {n['reinitialised']} re-initialised" in out
    assert n["loaded"] + n["reinitialised"] + n["left_random"] == len(src.state_dict())
    assert report["source"] == "vita" and "init_report.json" in out
    # --resume of a weights-only model_final.pth suggests --init, which now exists
    assert train.main(common + ["--out", str(tmp_path / "run2"), "--resume", str(weights)]) == 2
    err = capsys.readouterr().err
    assert f"vita-deploy train --init {weights}" in err


def test_data_check_reports_a_dataset_and_names_missing_frames(tmp_path, capsys):
    from vita_deploy.commands import data as data_command

    generate_split(tmp_path / "d", "train", 2, seed=5, min_frames=3, max_frames=4, progress=False)
    assert data_command.main(["--check", str(tmp_path / "d")]) == 0
    out = capsys.readouterr().out
    assert "train.json: 2 videos" in out and "vita-deploy train --init" in out
    video = json.loads((tmp_path / "d" / "train.json").read_text())["videos"][0]
    (tmp_path / "d" / "train" / "JPEGImages" / video["file_names"][1]).unlink()
    assert data_command.main(["--check", str(tmp_path / "d")]) == 2
    err = capsys.readouterr().err
    assert "1 of the" in err and video["file_names"][1] in err
    assert data_command.main(["--check", str(tmp_path)]) == 2  # no train.json
    assert "train.json" in capsys.readouterr().err
