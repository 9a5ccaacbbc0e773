"""Checkpoints: our own format (config + weights, written atomically) and import of official VITA weights.

Official detectron2 checkpoints (`model_final.pth`, `{"model": state_dict, ...}`) name the two graphs'
weights `backbone.*`, `sem_seg_head.pixel_decoder.*`, `sem_seg_head.predictor.*` and `vita_module.*`;
`vita_module.vita_mask_features.*` belongs to our frame detector (vita_spec.md section 7).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from vita_deploy.config import ZOO, ModelConfig, SwinConfig, get_config
from vita_deploy.files import atomic_write
from vita_deploy.modeling.model import VitaModel, build_model

FORMAT = "vita-deploy"

# (our prefix, official prefix), most specific first.
OFFICIAL_PREFIXES = (
    ("frame_detector.vita_mask_features.", "vita_module.vita_mask_features."),
    ("frame_detector.backbone.", "backbone."),
    ("frame_detector.pixel_decoder.", "sem_seg_head.pixel_decoder."),
    ("frame_detector.predictor.", "sem_seg_head.predictor."),
    ("vita_head.", "vita_module."),
)
# Official keys that carry no inference or training weights of ours (loss buffers, BN step counters).
IGNORED_OFFICIAL_SUFFIXES = ("num_batches_tracked",)
IGNORED_OFFICIAL_KEYS = ("criterion.empty_weight", "vita_criterion.empty_weight", "pixel_mean", "pixel_std")


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message names the file, the problem and the fix."""


def to_official_key(key: str) -> str:
    for ours, theirs in OFFICIAL_PREFIXES:
        if key.startswith(ours):
            return theirs + key[len(ours):]
    raise KeyError(key)


def from_official_key(key: str) -> str | None:
    for ours, theirs in OFFICIAL_PREFIXES:
        if key.startswith(theirs):
            return ours + key[len(theirs):]
    return None


def save_checkpoint(path: str | Path, model: VitaModel, **extra: Any) -> Path:
    """Write {"format", "config", "model", **extra} atomically. `extra` must hold only plain data/tensors."""
    payload = {"format": FORMAT, "config": model.cfg.to_dict(), "model": model.state_dict(), **extra}
    return atomic_write(path, lambda tmp: torch.save(payload, tmp))


def _torch_load(path: Path) -> dict:
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises several types for corrupt or unsafe files
        raise CheckpointError(
            f"cannot load {path} with torch.load(weights_only=True): {type(e).__name__}: {str(e).splitlines()[0]}. "
            "The file is corrupt, truncated, or pickles objects other than tensors and plain data "
            "(re-save it with torch.save({'model': model.state_dict()}, path))") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} holds a {type(data).__name__}, not a dict with a state dict")
    return data


def load_checkpoint(path: str | Path, cfg: ModelConfig | None = None) -> tuple[VitaModel, dict]:
    """Load our checkpoint or an official detectron2 VITA checkpoint -> (model in eval mode, the file's dict).

    Ours carries its config; an official one (`model_final.pth`, state dict at the top or under "model") is
    loaded as `cfg`, or without `cfg` as the zoo config its keys and shapes identify (YouTube-VIS 2019 and 2021
    checkpoints of one backbone have the same shapes, so for those `cfg` must say which).
    """
    path = Path(path)
    data = _torch_load(path)
    if data.get("format") == FORMAT:
        model = build_model(ModelConfig.from_dict(data["config"]))
        load_state_dict_checked(model, data["model"], str(path))
    else:
        state = data.get("model", data)
        if not isinstance(state, dict):
            raise CheckpointError(f"{path}: 'model' holds a {type(state).__name__}, not a state dict")
        if cfg is None:
            matches = matching_zoo_configs(state)
            if len(matches) > 1:
                raise CheckpointError(
                    f"{path} fits {' and '.join(matches)} (same backbone, class count and shapes; official "
                    f"checkpoints do not record their dataset): pass --config {' or --config '.join(matches)}")
            cfg = get_config(matches[0] if matches else "r50-ytvis19")
        model = build_model(cfg)
        import_official_state_dict(model, state, str(path))
    return model.eval(), data


def _shape(state: dict, key: str) -> tuple[int, ...] | None:
    value = state.get(key)
    return tuple(value.shape) if isinstance(value, torch.Tensor) else None


def _blocks(state: dict, prefix: str, index: int) -> int:
    """Number of blocks under `prefix` (`<prefix><j>.`): 1 + the largest j at key part `index`."""
    ids = [int(k.split(".")[index]) for k in state if k.startswith(prefix) and k.split(".")[index].isdigit()]
    return 1 + max(ids) if ids else 0


def official_signature(state: dict) -> tuple | None:
    """What an official VITA state dict's keys and shapes say about its config: (backbone, classes, frame
    queries, width), the backbone as ("swin", embed_dim, depths) or ("resnet", stem channels, blocks per stage);
    None when the keys are not an official VITA model's."""
    cls = _shape(state, "sem_seg_head.predictor.class_embed.weight")
    queries = _shape(state, "sem_seg_head.predictor.query_feat.weight")
    if cls is None or queries is None:
        return None
    patch = _shape(state, "backbone.patch_embed.proj.weight")
    stem = _shape(state, "backbone.stem.conv1.weight")
    if patch is not None:
        backbone = ("swin", patch[0], tuple(_blocks(state, f"backbone.layers.{i}.blocks.", 4) for i in range(4)))
    elif stem is not None:
        backbone = ("resnet", stem[0], tuple(_blocks(state, f"backbone.res{i + 2}.", 2) for i in range(4)))
    else:
        return None
    return backbone, cls[0] - 1, queries[0], queries[1]


def config_signature(cfg: ModelConfig) -> tuple:
    """`official_signature` of a checkpoint of `cfg`."""
    b = cfg.backbone
    backbone = (("swin", b.embed_dim, tuple(b.depths)) if isinstance(b, SwinConfig)
                else ("resnet", b.stem_channels, tuple(b.blocks_per_stage)))
    return backbone, cfg.num_classes, cfg.frame_decoder.num_queries, cfg.frame_decoder.hidden_dim


def matching_zoo_configs(state: dict) -> list[str]:
    """Zoo configs (`vita_deploy.config.ZOO`) whose checkpoints have the backbone, class count and widths of
    the official state dict `state`; e.g. ['swinl-ovis'], or ['r50-ytvis19', 'r50-ytvis21'] (same shapes)."""
    sig = official_signature(state)
    return [name for name in ZOO if sig is not None and config_signature(get_config(name)) == sig]


def load_state_dict_checked(model: VitaModel, state: dict[str, torch.Tensor], source: str) -> None:
    """Strict load with every missing/unexpected/mis-shaped key named in one clear error."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(v.shape)}"
              for k, v in expected.items() if k in state and tuple(state[k].shape) != tuple(v.shape)]
    if missing or unexpected or shapes:
        raise CheckpointError(_mismatch_message(source, model.cfg.name, missing, unexpected, shapes))
    model.load_state_dict(state)


def import_official_state_dict(model: VitaModel, state: dict[str, torch.Tensor], source: str = "state dict"
                               ) -> dict[str, list[str]]:
    """Load an official VITA state dict into `model`; raises CheckpointError naming every mismatch.

    Returns {"ignored": [...]} for official keys that are known to carry nothing we use.
    """
    converted, unexpected, ignored = {}, [], []
    for key, value in state.items():
        if key in IGNORED_OFFICIAL_KEYS or key.endswith(IGNORED_OFFICIAL_SUFFIXES):
            ignored.append(key)
            continue
        ours = from_official_key(key)
        if ours is None:
            unexpected.append(key)
        else:
            converted[ours] = value
    expected = model.state_dict()
    missing = [to_official_key(k) for k in expected if k not in converted]
    unexpected += [to_official_key(k) for k in converted if k not in expected]
    shapes = [f"{to_official_key(k)}: checkpoint {tuple(converted[k].shape)} vs model {tuple(v.shape)}"
              for k, v in expected.items() if k in converted and tuple(converted[k].shape) != tuple(v.shape)]
    if missing or unexpected or shapes:
        matches = matching_zoo_configs(state)
        hint = ""
        if matches and model.cfg.name not in matches:  # a checkpoint of another zoo config: say which
            hint = (f"this checkpoint is a {matches[0]} checkpoint: pass --config {matches[0]}" if len(matches) == 1
                    else f"this checkpoint is a {' or '.join(matches)} checkpoint (same shapes): pass "
                         f"--config {' or --config '.join(matches)}")
        raise CheckpointError(_mismatch_message(source, model.cfg.name, missing, unexpected, shapes, hint=hint))
    model.load_state_dict({k: v for k, v in converted.items() if k in expected})
    return {"ignored": ignored}


def _mismatch_message(source: str, config: str, missing: list[str], unexpected: list[str], shapes: list[str],
                      limit: int = 20, hint: str = "") -> str:
    def block(title: str, items: list[str]) -> str:
        if not items:
            return ""
        more = f"\n    ... and {len(items) - limit} more" if len(items) > limit else ""
        return f"\n  {title} ({len(items)}):\n    " + "\n    ".join(items[:limit]) + more

    if hint:
        return (f"checkpoint {source} does not match the '{config}' model: {hint}"
                + block("missing keys", missing) + block("unexpected keys", unexpected)
                + block("shape mismatches", shapes))
    return (f"checkpoint {source} does not match the '{config}' model"
            + block("missing keys", missing) + block("unexpected keys", unexpected)
            + block("shape mismatches", shapes)
            + "\nPick the config the checkpoint was trained with (--config r50-ytvis19 for official R-50 "
              "YouTube-VIS 2019 weights; see vita_deploy.config.config_names()), or check that the file is a "
              "VITA checkpoint.")
