"""Train VITA: `vita-deploy train --config tiny --data DIR --out RUN [--resume]`.

DIR is a YouTube-VIS folder: `train.json` + `train/JPEGImages/` (and optionally `valid.json` +
`valid/JPEGImages/` with annotations, for periodic evaluation), e.g. from `vita-deploy data`.
Multi-GPU (or multi-process CPU with gloo): `torchrun --nproc_per_node N -m vita_deploy train ...`.
"""
from __future__ import annotations

import argparse
import os
import sys
from dataclasses import fields
from pathlib import Path

from vita_deploy.commands import cli
from vita_deploy.config import canonical_config_name, config_names, get_config
from vita_deploy.errors import InputError
from vita_deploy.files import prepare_output_dir
from vita_deploy.training.trainer import Trainer, TrainConfig


def recipe_defaults(config: str, world_size: int = 1) -> dict:
    """TrainConfig defaults for `config`: its official (or, for `tiny`, shipped) recipe, `ModelConfig.train`:
    SOLVER.MAX_ITER, IMS_PER_BATCH split over the processes, SAMPLING_FRAME_NUM/RANGE, BASE_LR, BACKBONE_MULTIPLIER,
    WARMUP_ITERS, WEIGHT_DECAY, CLIP_GRADIENTS, STEPS (as fractions) and AMP; the rest from TrainConfig."""
    recipe = get_config(config).train
    defaults = {f.name: f.default for f in fields(TrainConfig) if f.name not in ("data", "out")}
    defaults.update(config=config, iters=recipe.max_iter, batch_size=max(1, recipe.ims_per_batch // world_size),
                    num_frames=recipe.sampling_frame_num, sampling_frame_range=recipe.sampling_frame_range,
                    lr=recipe.base_lr, backbone_lr_mult=recipe.backbone_multiplier, warmup_iters=recipe.warmup_iters,
                    weight_decay=recipe.weight_decay, clip_grad=recipe.clip_gradients,
                    lr_steps=recipe.lr_step_fractions, amp=recipe.amp)
    return defaults


def parse_args(argv: list[str] | None = None, with_overwrite: bool = False, prog: str = "vita-deploy train"):
    """(TrainConfig, resume path or None[, overwrite]); every schedule flag defaults to the --config's recipe."""
    pre = argparse.ArgumentParser(add_help=False)  # the config first (its recipe gives the defaults) ...
    pre.add_argument("--config", default=TrainConfig.config)
    config = pre.parse_known_args(argv)[0].config
    config = canonical_config_name(config) if canonical_config_name(config) in config_names() else TrainConfig.config
    defaults = recipe_defaults(config, int(os.environ.get("WORLD_SIZE", "1")))  # ... and `p` reports a bad one
    p = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="Schedule flags default to the chosen --config's training recipe (README "
                                       "\"Model zoo\"); give any of them to override it.")
    p.add_argument("--data", type=cli.existing_dir, required=True,
                   help="YouTube-VIS folder with train.json and train/JPEGImages")
    p.add_argument("--out", type=cli.output_dir, required=True,
                   help="run folder: checkpoints, log.jsonl, loss_curve.png (an existing one needs --resume or "
                        "--overwrite)")
    p.add_argument("--config", default=defaults["config"], choices=config_names(), type=canonical_config_name)
    g = p.add_argument_group("schedule")
    g.add_argument("--iters", type=cli.positive_int, default=defaults["iters"])
    g.add_argument("--batch-size", type=cli.positive_int, default=defaults["batch_size"], help="clips per process")
    g.add_argument("--num-frames", type=cli.positive_int, default=defaults["num_frames"], help="frames per clip (T)")
    g.add_argument("--sampling-frame-range", type=cli.nonnegative_int, default=defaults["sampling_frame_range"])
    g.add_argument("--lr", type=cli.positive_float, default=defaults["lr"])
    g.add_argument("--backbone-lr-mult", type=cli.nonnegative_float, default=defaults["backbone_lr_mult"],
                   help="backbone lr factor: 0.1 fine-tunes a pretrained backbone (official); 1.0 from scratch")
    g.add_argument("--warmup-iters", type=cli.nonnegative_int, default=defaults["warmup_iters"])
    g.add_argument("--clip-grad", type=cli.nonnegative_float, default=defaults["clip_grad"])
    g.add_argument("--num-points", type=cli.positive_int, default=defaults["num_points"],
                   help="points per mask in losses")
    g = p.add_argument_group("run")
    g.add_argument("--eval-every", type=cli.nonnegative_int, default=defaults["eval_every"],
                   help="0 disables evaluation")
    g.add_argument("--eval-videos", type=cli.nonnegative_int, default=defaults["eval_videos"],
                   help="0 = whole valid split")
    g.add_argument("--ckpt-every", type=cli.positive_int, default=defaults["ckpt_every"])
    g.add_argument("--log-every", type=cli.positive_int, default=defaults["log_every"])
    g.add_argument("--workers", type=cli.nonnegative_int, default=defaults["workers"])
    g.add_argument("--seed", type=int, default=defaults["seed"])
    g.add_argument("--device", type=cli.device, default=defaults["device"])
    g.add_argument("--no-amp", action="store_true", help="disable fp16 autocast on CUDA (the recipes use it)")
    g.add_argument("--resume", nargs="?", const="auto", default=None,
                   help="resume from RUN/last.pth (or the given checkpoint)")
    g.add_argument("--init", default=None, metavar="WEIGHTS",
                   help="start from these weights: an official VITA model_final.pth, a COCO Mask2Former .pkl, "
                        "an ImageNet backbone (torchvision ResNet .pth, detectron2 R-50.pkl/R-101.pkl, Swin "
                        "ImageNet .pth) or a vita-deploy checkpoint; the class head is re-initialised when the "
                        "data set's classes differ. RUN/init_report.json lists every tensor")
    g.add_argument("--overwrite", action="store_true",
                   help="start over in an existing run folder (its checkpoints and log are replaced)")
    a = p.parse_args(argv)
    if a.resume and a.overwrite:
        p.error("--resume continues the run in --out and --overwrite starts it over: pass one of them")
    if a.resume and a.init:
        p.error("--resume continues a run (its weights and optimizer) and --init starts a new one from weights: "
                "pass one of them")
    cfg = TrainConfig(data=a.data, out=a.out, config=a.config, iters=a.iters, batch_size=a.batch_size,
                      num_frames=a.num_frames, sampling_frame_range=a.sampling_frame_range, lr=a.lr,
                      backbone_lr_mult=a.backbone_lr_mult, warmup_iters=a.warmup_iters, clip_grad=a.clip_grad,
                      weight_decay=defaults["weight_decay"], lr_steps=defaults["lr_steps"], num_points=a.num_points,
                      eval_every=a.eval_every, eval_videos=a.eval_videos,
                      ckpt_every=a.ckpt_every, log_every=a.log_every, workers=a.workers, seed=a.seed,
                      device=a.device, amp=defaults["amp"] and not a.no_amp)
    resume = None
    if a.resume == "auto":
        resume = str(Path(a.out) / "last.pth")
    elif a.resume:
        resume = a.resume
    return (cfg, resume, a.overwrite, a.init) if with_overwrite else (cfg, resume)


@cli.command
def main(argv: list[str] | None = None, prog: str = "vita-deploy train") -> int:
    cfg, resume, overwrite, init = parse_args(argv, with_overwrite=True, prog=prog)
    if resume and not Path(resume).is_file():
        raise InputError("the checkpoint to resume from does not exist", resume,
                         "pass --resume PATH of a last.pth, or leave --resume out to start a new run")
    if init and not Path(init).is_file():
        raise InputError("the weights to start from do not exist", init,
                         "pass --init PATH of a model_final.pth, a Mask2Former .pkl or an ImageNet backbone file")
    if not (Path(cfg.data) / "train.json").is_file():
        raise InputError("--data has no train.json: the file does not exist", Path(cfg.data) / "train.json",
                         "pass a YouTube-VIS folder with train.json and "
                         "train/JPEGImages (e.g. from `vita-deploy data`)")
    if os.environ.get("RANK", "0") == "0":  # other ranks of torchrun find the folder rank 0 made
        prepare_output_dir(cfg.out, resume=bool(resume), overwrite=overwrite, what="run folder (--out)",
                           inputs={"--data": cfg.data, "--resume": resume if resume and not
                                   Path(resume).resolve().is_relative_to(Path(cfg.out).resolve()) else None,
                                   "--init": init})
    trainer = Trainer(cfg)
    if resume:
        trainer.resume(resume)
        print(f"resumed from {resume} at iteration {trainer.iteration}")
    if init:
        report = trainer.initialise(init)
        if os.environ.get("RANK", "0") == "0":
            print(report.summary() + f"\n  key by key: {Path(cfg.out) / 'init_report.json'}")
    metrics = trainer.train()
    if metrics:
        print("final val: " + "  ".join(f"{k} {v:.1f}" for k, v in metrics.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main(prog="python -m vita_deploy.commands.train"))
