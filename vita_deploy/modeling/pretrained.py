"""Initial weights for training (`vita-deploy train --init WEIGHTS`) from the files the official recipe starts from.

Sources, told apart by their keys:
- "vita-deploy": our own checkpoint (config + weights).
- "vita": an official VITA `model_final.pth` (any zoo config): `backbone.*`, `sem_seg_head.*`, `vita_module.*`.
- "mask2former": a COCO-pretrained Mask2Former instance-segmentation checkpoint (detectron2 `.pkl`,
  `{"model": {name: numpy array}, "__author__": ..., "matching_heuristics": ...}`): backbone, pixel decoder and
  frame decoder; VITA's own head and `vita_mask_features` stay at their initialisation.
- "torchvision-resnet": a torchvision ResNet state dict (`conv1.weight`, `layer1.0.conv1.weight`, `bn1.*`, ...).
- "msra-resnet": detectron2's ImageNet `R-50.pkl`/`R-101.pkl` in Caffe2/MSRA naming (`conv1_w`,
  `res_conv1_bn_s`, `res2_0_branch2a_w`, `res2_0_branch2a_bn_s`/`_b`, ...), batch norm folded into scale/bias.
- "d2-resnet": a detectron2 backbone `.pkl` already in detectron2 naming (`stem.conv1.weight`, `res2.0.conv1...`).
- "swin": Swin ImageNet weights in the official Swin naming (`swin_large_patch4_window12_384_22k.pth`,
  `{"model": {"patch_embed.proj.weight", "layers.0.blocks.0.attn.qkv.weight", ...}}`).

`.pkl` files are read with `restricted_pickle_load`, which rebuilds only dicts, lists, strings, numbers and
numpy arrays; everything else is read with `torch.load(weights_only=True)`. Weights whose shape depends on the
classes (the two class heads) are re-initialised when the data set's class count differs (or, for our own
checkpoints, its category names); every other shape mismatch is an error naming the keys and the fix.
"""
from __future__ import annotations

import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vita_deploy.modeling.checkpoint import (FORMAT, CheckpointError, _torch_load, from_official_key,
                                             IGNORED_OFFICIAL_KEYS, IGNORED_OFFICIAL_SUFFIXES)
from vita_deploy.modeling.model import VitaModel

# Our keys whose shape follows the number of classes (num_classes + 1 "no object" logits).
CLASS_DEPENDENT_PREFIXES = ("frame_detector.predictor.class_embed.", "vita_head.class_embed.")

# What unpickling a dict of numpy arrays needs (Python 2 pickles of detectron2's MSRA files included).
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("_codecs", "encode"),  # bytes in protocol-2 pickles written by Python 3
    ("collections", "OrderedDict"),
}


class _ArraysOnlyUnpickler(pickle.Unpickler):
    """pickle.Unpickler that resolves only the globals numpy arrays and plain containers need."""

    def __init__(self, file, source: str) -> None:
        super().__init__(file, encoding="latin1")  # detectron2's MSRA files are Python 2 pickles
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise CheckpointError(
            f"{self.source} asks to unpickle {module}.{name}, which is not a dict, list, string, number or numpy "
            "array: refused (unpickling arbitrary objects can run code). Use a detectron2 weight file "
            "({'model': {name: numpy array}}) or re-save the weights with torch.save(state_dict, path)")


def restricted_pickle_load(path: str | Path) -> Any:
    """Unpickle `path` admitting only dicts, lists, tuples, strings, numbers and numeric numpy arrays."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights file {path} does not exist")
    try:
        with open(path, "rb") as f:
            data = _ArraysOnlyUnpickler(f, str(path)).load()
    except CheckpointError:
        raise
    except Exception as e:  # noqa: BLE001 - truncated/corrupt pickles raise many types
        raise CheckpointError(f"cannot read {path} as a pickle of numpy arrays: {type(e).__name__}: {e}. "
                              "The file is corrupt or truncated; download it again") from None
    return data


def _to_tensors(state: dict, source: str) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in state.items():
        if isinstance(value, torch.Tensor):
            out[key] = value
        elif isinstance(value, np.ndarray):
            if value.dtype == object:
                raise CheckpointError(f"{source}: {key} is a numpy array of Python objects, not numbers")
            out[key] = torch.from_numpy(np.ascontiguousarray(value))
        # other entries (numbers, strings) carry no weights
    return out


def read_weights(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """(state dict of tensors, the file's top-level dict) of a `.pkl` (restricted unpickler) or torch file."""
    path = Path(path)
    if path.suffix == ".pkl":
        data = restricted_pickle_load(path)
        if not isinstance(data, dict):
            raise CheckpointError(f"{path} holds a {type(data).__name__}, not a dict of weights")
        state = data.get("model", data.get("blobs", data))
    else:
        data = _torch_load(path)
        state = data.get("model", data.get("state_dict", data))
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: the weights are a {type(state).__name__}, not a dict of arrays")
    return _to_tensors(state, str(path)), data


def detect_source(state: dict[str, torch.Tensor], data: dict) -> str:
    """Which of the module docstring's sources `state` is; CheckpointError if none."""
    if data.get("format") == FORMAT:
        return "vita-deploy"
    keys = set(state)
    if any(k.startswith("vita_module.") for k in keys):
        return "vita"
    if any(k.startswith("sem_seg_head.") for k in keys):
        return "mask2former"
    if "conv1.weight" in keys and any(k.startswith("layer1.") for k in keys):
        return "torchvision-resnet"
    if "conv1_w" in keys or any(k.startswith("res2_0_branch2a") for k in keys):
        return "msra-resnet"
    if "stem.conv1.weight" in keys:
        return "d2-resnet"
    if "patch_embed.proj.weight" in keys and any(k.startswith("layers.0.blocks.") for k in keys):
        return "swin"
    sample = ", ".join(sorted(keys)[:5])
    raise CheckpointError(
        f"cannot tell what model the weights are for (first keys: {sample}). --init takes a vita-deploy "
        "checkpoint, an official VITA model_final.pth, a Mask2Former instance-segmentation .pkl, a torchvision "
        "ResNet state dict, detectron2's R-50.pkl/R-101.pkl, or Swin ImageNet weights")


def _torchvision_resnet_key(key: str) -> str | None:
    if key.startswith("fc."):
        return None
    key = re.sub(r"^conv1\.", "stem.conv1.", key)
    key = re.sub(r"^bn1\.", "stem.conv1.norm.", key)
    m = re.match(r"^layer(\d)\.(.*)$", key)
    if m:
        key = f"res{int(m.group(1)) + 1}.{m.group(2)}"
        key = re.sub(r"\.bn(\d)\.", r".conv\1.norm.", key)
        key = key.replace(".downsample.0.", ".shortcut.").replace(".downsample.1.", ".shortcut.norm.")
    return key


def _msra_resnet_key(key: str) -> str | None:
    """detectron2's convert_basic_c2_names for the backbone (c2_model_loading.py)."""
    if key.startswith(("fc1000", "pred")) or key.endswith("_momentum"):
        return None
    key = key.replace("_", ".")
    key = re.sub(r"\.b$", ".bias", key)
    key = re.sub(r"\.w$", ".weight", key)
    key = re.sub(r"bn\.s$", "norm.weight", key)
    key = re.sub(r"bn\.bias$", "norm.bias", key)
    key = re.sub(r"bn\.rm$", "norm.running_mean", key)
    key = re.sub(r"bn\.riv$", "norm.running_var", key)
    key = re.sub(r"^res\.conv1\.norm\.", "conv1.norm.", key)
    key = re.sub(r"^conv1\.", "stem.conv1.", key)
    for c2, ours in ((".branch1.", ".shortcut."), (".branch2a.", ".conv1."), (".branch2b.", ".conv2."),
                     (".branch2c.", ".conv3.")):
        key = key.replace(c2, ours)
    return key


def to_our_keys(state: dict[str, torch.Tensor], source: str, pixel_std: tuple[float, float, float] = (1.0, 1.0, 1.0)
                ) -> tuple[dict[str, torch.Tensor], list[str]]:
    """(weights under our model's keys, the file's keys that carry nothing we use).

    MSRA ResNets take BGR pixels minus the mean, not divided by a std (detectron2: PIXEL_STD 1, FORMAT BGR);
    our input is RGB divided by `pixel_std`, so their first convolution's input channels are reversed and
    scaled by `pixel_std` (the same mean, in the other order)."""
    converted: dict[str, torch.Tensor] = {}
    unused: list[str] = []
    for key, value in state.items():
        if key.endswith("num_batches_tracked"):
            unused.append(key)
            continue
        if source == "vita-deploy":
            ours = key
        elif source in ("vita", "mask2former"):
            ours = None if key in IGNORED_OFFICIAL_KEYS or key.endswith(IGNORED_OFFICIAL_SUFFIXES) \
                else from_official_key(key)
        elif source == "torchvision-resnet":
            ours = _torchvision_resnet_key(key)
        elif source == "msra-resnet":
            ours = _msra_resnet_key(key)
        else:  # d2-resnet, swin: detectron2/Swin naming is ours under the backbone
            ours = None if key.startswith(("head.", "norm.")) or key.endswith("attn_mask") else key
        if ours is not None and source not in ("vita-deploy", "vita", "mask2former"):
            ours = "frame_detector.backbone." + ours
        if ours is None:
            unused.append(key)
        else:
            converted[ours] = value
    if source == "msra-resnet":
        stem = "frame_detector.backbone.stem.conv1.weight"
        if stem in converted and converted[stem].shape[1] == 3:  # BGR, std 1 -> RGB, / pixel_std
            std = torch.tensor(pixel_std, dtype=converted[stem].dtype).view(1, 3, 1, 1)
            converted[stem] = converted[stem].flip(1) * std
        # BN folded into scale/bias: the statistics are the identity (mean 0, var 1)
        for key, value in list(converted.items()):
            if key.endswith(".norm.weight"):
                base = key[: -len("weight")]
                converted.setdefault(base + "running_mean", torch.zeros_like(value))
                converted.setdefault(base + "running_var", torch.ones_like(value))
    return converted, unused


@dataclass
class InitReport:
    """What `init_from_weights` did, key by key (our model's keys, except `unused`: the file's keys)."""

    source: str
    path: str
    loaded: list[str] = field(default_factory=list)
    reinitialised: list[str] = field(default_factory=list)  # class-dependent: the data set's classes differ
    left_random: list[str] = field(default_factory=list)  # not in the file: the model's initialisation
    unused: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        text = (f"--init {self.path} ({self.source}): {len(self.loaded)} tensors loaded, {len(self.reinitialised)} "
                f"re-initialised (class head), {len(self.left_random)} left at initialisation, "
                f"{len(self.unused)} in the file unused")
        return "\n".join([text, *("  note: " + n for n in self.notes)])

    def to_dict(self) -> dict:
        return {"source": self.source, "path": self.path, "notes": self.notes,
                "counts": {k: len(getattr(self, k)) for k in ("loaded", "reinitialised", "left_random", "unused")},
                "loaded": self.loaded, "reinitialised": self.reinitialised, "left_random": self.left_random,
                "unused": self.unused}


def init_from_weights(model: VitaModel, path: str | Path) -> InitReport:
    """Copy the weights of `path` that fit `model` into it (in place); see the module docstring."""
    state, data = read_weights(path)
    source = detect_source(state, data)
    converted, unused = to_our_keys(state, source, model.cfg.input.pixel_std)
    report = InitReport(source=source, path=str(path), unused=sorted(unused))
    same_classes = True
    if source == "vita-deploy":
        names = tuple(data.get("config", {}).get("class_names") or ())
        if names and model.cfg.class_names and tuple(model.cfg.class_names) != names:
            same_classes = False
    expected = model.state_dict()
    report.unused += sorted(k for k in converted if k not in expected)
    mismatched, new_state = [], {}
    for key, value in expected.items():
        if key not in converted:
            report.left_random.append(key)
            continue
        theirs = converted[key]
        class_dependent = key.startswith(CLASS_DEPENDENT_PREFIXES)
        if class_dependent and (tuple(theirs.shape) != tuple(value.shape) or not same_classes):
            report.reinitialised.append(key)
        elif tuple(theirs.shape) != tuple(value.shape):
            mismatched.append(f"{key}: file {tuple(theirs.shape)} vs model {tuple(value.shape)}")
        else:
            new_state[key] = theirs.to(value.dtype)
            report.loaded.append(key)
    if mismatched:
        more = f"\n  ... and {len(mismatched) - 20} more" if len(mismatched) > 20 else ""
        raise CheckpointError(
            f"--init {path} ({source} weights) does not fit the '{model.cfg.name}' model in "
            f"{len(mismatched)} tensors besides the class head:\n  " + "\n  ".join(mismatched[:20]) + more +
            "\nPass the --config of the weights' architecture (e.g. --config r50 for R-50 weights, "
            "--config swinl-ytvis19 for Swin-L)")
    if not report.loaded:
        raise CheckpointError(f"--init {path} ({source} weights): no tensor fits the '{model.cfg.name}' model; "
                              "pass the --config of the weights' architecture")
    model.load_state_dict(new_state, strict=False)
    if source == "msra-resnet":
        report.notes.append("MSRA ResNets were trained with the stride in the 1x1 convolution; this ResNet "
                            "(as Mask2Former's, torchvision's R-50) strides in the 3x3: a usable start, not the "
                            "same network")
    if report.reinitialised:
        report.notes.append("class head re-initialised: the data set's categories differ from the weights'")
    return report
