"""Model loading for the command-line tools: our checkpoint, an official one, or the shipped tiny checkpoint."""
from __future__ import annotations

import sys
from pathlib import Path

import torch

from vita_deploy.config import canonical_config_name, get_config
from vita_deploy.modeling.checkpoint import CheckpointError, load_checkpoint
from vita_deploy.modeling.model import VitaModel, build_model

DEFAULT_CHECKPOINT = Path(__file__).parent / "assets" / "vita_tiny_synthetic.pth"


def default_checkpoint(checkpoint: str | Path | None, config: str | None) -> Path | None:
    """`checkpoint`, or the shipped tiny checkpoint when none is given and the config is tiny (or unset)."""
    if checkpoint is None and config in (None, "tiny") and DEFAULT_CHECKPOINT.is_file():
        return DEFAULT_CHECKPOINT
    return Path(checkpoint) if checkpoint is not None else None


def random_weights(config: str) -> VitaModel:
    """The `config` model with random weights, seed 0: what export, infer and verify run without a checkpoint
    (the same weights in every process, so an export of random weights can be verified)."""
    print(f"warning: no checkpoint given: running the '{config}' model with RANDOM weights", file=sys.stderr)
    torch.manual_seed(0)
    return build_model(get_config(config)).eval()


def load_model(checkpoint: str | Path | None, config: str | None) -> VitaModel:
    """Our checkpoint (config inside), an official one (`config`, default r50), or the shipped tiny one.

    A checkpoint of ours whose config is not `config` (when given) is refused, naming both.
    """
    checkpoint = default_checkpoint(checkpoint, config)
    if checkpoint is None:
        return random_weights(config or "tiny")
    model = load_checkpoint(checkpoint, get_config(config) if config else None)[0]
    if config and canonical_config_name(model.cfg.name) != canonical_config_name(config):
        raise CheckpointError(f"{checkpoint} holds a '{model.cfg.name}' model, not '{config}': pass "
                              f"--config {model.cfg.name} (or leave --config out), or the checkpoint of '{config}'")
    return model
