"""Training smoke runs: the loss goes down, resume continues exactly, and DDP runs with 2 CPU processes."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from vita_deploy.data.synthetic import generate_split
from vita_deploy.modeling.checkpoint import load_checkpoint
from vita_deploy.training.trainer import Trainer, TrainConfig, build_optimizer, lr_factor


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("train_data")
    generate_split(root, "train", 8, seed=11, min_frames=6, max_frames=10, progress=False)
    generate_split(root, "valid", 2, seed=12, min_frames=6, max_frames=8, progress=False)
    return root


def config(data, out, **kw):
    base = dict(data=str(data), out=str(out), config="tiny", iters=30, batch_size=2, num_frames=2, lr=3e-4,
                num_points=256, eval_every=0, ckpt_every=0, log_every=1, workers=0, device="cpu")
    base.update(kw)
    return TrainConfig(**base)


def test_loss_goes_down_and_outputs_are_written(data, tmp_path):
    torch.manual_seed(0)
    trainer = Trainer(config(data, tmp_path / "run"))
    trainer.train()
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in log if "loss" in r]
    assert len(losses) == 30
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.75 * first, (first, last)
    assert (tmp_path / "run" / "loss_curve.png").stat().st_size > 1000
    model, ckpt = load_checkpoint(tmp_path / "run" / "model_final.pth")
    assert ckpt["iteration"] == 30 and model.cfg.class_names[:2] == ("circle", "square")
    assert "optimizer" not in ckpt and "optimizer" in torch.load(tmp_path / "run" / "last.pth", weights_only=True)


def test_resume_continues_from_the_checkpoint(data, tmp_path):
    out = tmp_path / "run"
    Trainer(config(data, out, iters=4, ckpt_every=2)).train()
    resumed = Trainer(config(data, out, iters=6))
    resumed.resume(out / "last.pth")
    assert resumed.iteration == 4
    resumed.train()
    iters = [json.loads(line)["iter"] for line in (out / "log.jsonl").read_text().splitlines()]
    assert iters == [1, 2, 3, 4, 5, 6]


def test_optimizer_groups_and_schedule(data, tmp_path):
    cfg = config(data, tmp_path)
    trainer = Trainer(cfg)
    groups = build_optimizer(trainer.model, cfg).param_groups
    by_id = {id(p): g for g in groups for p in g["params"]}
    fd = trainer.model.frame_detector
    assert by_id[id(fd.backbone.stem.conv1.weight)]["lr"] == pytest.approx(cfg.lr * 0.1)
    assert by_id[id(fd.backbone.stem.conv1.weight)]["weight_decay"] == cfg.weight_decay
    assert by_id[id(fd.predictor.decoder_norm.weight)]["weight_decay"] == 0.0
    assert by_id[id(fd.predictor.query_feat.weight)]["weight_decay"] == 0.0
    assert by_id[id(fd.predictor.class_embed.weight)]["lr"] == pytest.approx(cfg.lr)
    assert lr_factor(0, cfg) == pytest.approx(0.1) and lr_factor(9, cfg) == pytest.approx(1.0)
    assert lr_factor(int(0.8 * cfg.iters), cfg) == pytest.approx(0.1)


def test_cli_schedule_flags_reach_the_optimizer(data, tmp_path):
    from vita_deploy.commands.train import parse_args
    cfg, resume = parse_args(["--data", str(data), "--out", str(tmp_path), "--lr", "1e-3",
                              "--backbone-lr-mult", "1.0", "--warmup-iters", "100"])
    assert resume is None and (cfg.backbone_lr_mult, cfg.warmup_iters) == (1.0, 100)
    defaults, _ = parse_args(["--data", str(data), "--out", str(tmp_path)])  # tiny: the shipped recipe
    assert (defaults.config, defaults.iters, defaults.batch_size, defaults.num_frames) == ("tiny", 2400, 4, 3)
    assert (defaults.lr, defaults.backbone_lr_mult, defaults.warmup_iters) == (1e-3, 1.0, 100)
    assert defaults.lr_steps == pytest.approx((0.8,)) and defaults.sampling_frame_range == 10
    model = Trainer(config(data, tmp_path, backbone_lr_mult=1.0)).model
    groups = build_optimizer(model, cfg).param_groups
    assert len(groups) > 1 and all(g["lr"] == pytest.approx(1e-3) for g in groups)  # backbone at full lr
    assert lr_factor(49, cfg) == pytest.approx(0.5) and lr_factor(99, cfg) == pytest.approx(1.0)


def test_ddp_with_two_cpu_processes(data, tmp_path):
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533",
           "-m", "vita_deploy", "train", "--data", str(data), "--out", str(out), "--iters", "3", "--batch-size", "1",
           "--num-frames", "2", "--num-points", "128", "--eval-every", "0", "--workers", "0", "--device", "cpu",
           "--log-every", "1"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in log] == [1, 2, 3] and all(r["world_size"] == 2 for r in log)
    _, ckpt = load_checkpoint(out / "model_final.pth")
    assert ckpt["iteration"] == 3


def test_bad_data_folder_is_a_clear_error(tmp_path, capsys):
    from vita_deploy.commands import train
    assert train.main(["--data", str(tmp_path), "--out", str(tmp_path / "o"), "--iters", "1"]) == 2
    assert "does not exist" in capsys.readouterr().err


@pytest.mark.parametrize("config, iters, steps, frames, frame_range", [
    ("r50", 140000, (75000,), 5, 20), ("swinl-ytvis21", 187500, (100000,), 6, 8), ("r50-ovis", 150000, (50000, 125000), 6, 8)])
def test_train_defaults_are_the_configs_official_recipe(config, iters, steps, frames, frame_range, data, tmp_path,
                                                        monkeypatch):
    """Written from the official yamls (SOLVER / INPUT of configs/<dataset>/vita_*_bs8.yaml), not from our configs."""
    from vita_deploy.data.dataset import ClipAugmentation
    from vita_deploy.commands.train import parse_args

    monkeypatch.setenv("WORLD_SIZE", "2")  # IMS_PER_BATCH 8 is all processes together
    cfg, _ = parse_args(["--data", str(data), "--out", str(tmp_path), "--config", config])
    assert (cfg.iters, cfg.batch_size, cfg.num_frames, cfg.sampling_frame_range) == (iters, 4, frames, frame_range)
    assert (cfg.lr, cfg.backbone_lr_mult, cfg.weight_decay, cfg.clip_grad, cfg.warmup_iters) == (
        5e-5, 0.1, 0.05, 0.01, 10)
    assert cfg.lr_steps == pytest.approx(tuple(s / iters for s in steps)) and cfg.amp
    overridden, _ = parse_args(["--data", str(data), "--out", str(tmp_path), "--config", config, "--lr", "1e-4",
                                "--iters", "10"])
    assert (overridden.lr, overridden.iters, overridden.num_frames) == (1e-4, 10, frames)
    from vita_deploy.config import get_config
    aug = ClipAugmentation.from_recipe(get_config(config).train)
    assert aug.min_sizes == tuple(range(288, 513, 32)) and aug.max_size == 768  # MIN/MAX_SIZE_TRAIN
    assert aug.crop_range == (384, 600) and aug.crop_resize_sizes == (400, 500, 600)  # CROP absolute_range
    assert ClipAugmentation.from_recipe(get_config("tiny").train) == ClipAugmentation()
