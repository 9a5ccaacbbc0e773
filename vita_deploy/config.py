"""Typed configs for VITA, one frozen dataclass per stage.

`r50` carries the official hyperparameters (vita_spec.md sections 1-3, YouTube-VIS 2019, 40 classes);
`tiny` is the same architecture scaled down so that it trains on 2 CPU cores in minutes. Both are built
by the same code (`vita_deploy.modeling.model.build_model`).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any


@dataclass(frozen=True)
class BackboneConfig:
    """detectron2-style ResNet (bottleneck blocks, FrozenBN, STRIDE_IN_1X1=False)."""

    blocks_per_stage: tuple[int, int, int, int] = (3, 4, 6, 3)
    stem_channels: int = 64
    res2_channels: int = 256  # output channels of res2; doubled at every later stage
    bottleneck_ratio: int = 4  # bottleneck width = out_channels // bottleneck_ratio

    @property
    def out_channels(self) -> dict[str, int]:
        return {f"res{i + 2}": self.res2_channels * 2**i for i in range(4)}


@dataclass(frozen=True)
class PixelDecoderConfig:
    """MSDeformAttn pixel decoder (Mask2Former `msdeformattn.py`)."""

    conv_dim: int = 256
    mask_dim: int = 256
    num_layers: int = 6
    num_heads: int = 8
    num_points: int = 4
    ffn_dim: int = 1024  # hard-coded in the official code
    norm_groups: int = 32  # GroupNorm(32)


@dataclass(frozen=True)
class FrameDecoderConfig:
    """Masked-attention transformer decoder (Mask2Former, DEC_LAYERS=10 means 9 layers)."""

    hidden_dim: int = 256
    num_queries: int = 100  # fQ
    num_heads: int = 8
    ffn_dim: int = 2048
    num_layers: int = 9
    num_last_layers: int = 3  # frame queries of the last 3 layers go to VITA in training (LAST_LAYER_NUM)


@dataclass(frozen=True)
class VitaConfig:
    """The VITA module over frame queries (`vita/modeling/transformer_decoder/vita.py`)."""

    hidden_dim: int = 256
    num_heads: int = 8
    ffn_dim: int = 2048
    enc_layers: int = 6
    dec_layers: int = 3
    window_size: int = 6
    num_queries: int = 100  # cQ


@dataclass(frozen=True)
class InputConfig:
    """Pre-processing: RGB, detectron2 mean/std in 0-255 units, shortest-edge resize, pad to 32."""

    min_size_test: int = 360
    max_size_test: int = 1333
    size_divisibility: int = 32
    pixel_mean: tuple[float, float, float] = (123.675, 116.28, 103.53)
    pixel_std: tuple[float, float, float] = (58.395, 57.12, 57.375)


@dataclass(frozen=True)
class InferenceConfig:
    """Whole-video inference (TEST_RUN_CHUNK_SIZE, TEST_INTERPOLATE_CHUNK_SIZE, DETECTIONS_PER_IMAGE)."""

    chunk_size: int = 18
    interpolate_chunk_size: int = 5
    topk: int = 10


@dataclass(frozen=True)
class ModelConfig:
    name: str = "r50"
    num_classes: int = 40
    class_names: tuple[str, ...] = ()
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    pixel_decoder: PixelDecoderConfig = field(default_factory=PixelDecoderConfig)
    frame_decoder: FrameDecoderConfig = field(default_factory=FrameDecoderConfig)
    vita: VitaConfig = field(default_factory=VitaConfig)
    input: InputConfig = field(default_factory=InputConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)

    def __post_init__(self) -> None:
        if self.frame_decoder.hidden_dim != self.pixel_decoder.conv_dim:
            raise ValueError("frame_decoder.hidden_dim must equal pixel_decoder.conv_dim (no input projection)")
        if self.vita.hidden_dim != self.frame_decoder.hidden_dim:
            raise ValueError("vita.hidden_dim must equal frame_decoder.hidden_dim")
        if self.pixel_decoder.mask_dim != self.vita.hidden_dim:
            raise ValueError("pixel_decoder.mask_dim must equal vita.hidden_dim (mask embeddings meet mask features)")
        if self.frame_decoder.num_layers % 3:
            raise ValueError("frame_decoder.num_layers must be a multiple of 3 (the memory level cycles i % 3)")
        if self.class_names and len(self.class_names) != self.num_classes:
            raise ValueError(f"{len(self.class_names)} class names for {self.num_classes} classes")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelConfig":
        """Inverse of `to_dict` (checkpoints and export manifests store the config this way)."""
        subs = {
            "backbone": BackboneConfig, "pixel_decoder": PixelDecoderConfig, "frame_decoder": FrameDecoderConfig,
            "vita": VitaConfig, "input": InputConfig, "inference": InferenceConfig,
        }
        kwargs: dict[str, Any] = {}
        for key, value in d.items():
            if key in subs:
                sub = subs[key]
                kwargs[key] = sub(**{k: tuple(v) if isinstance(v, list) else v for k, v in value.items()})
            elif key == "class_names":
                kwargs[key] = tuple(value)
            else:
                kwargs[key] = value
        return cls(**kwargs)

    def with_num_classes(self, num_classes: int, class_names: tuple[str, ...] = ()) -> "ModelConfig":
        return replace(self, num_classes=num_classes, class_names=tuple(class_names))


YTVIS_2019_CLASSES = (
    "person", "giant_panda", "lizard", "parrot", "skateboard", "sedan", "ape", "dog", "snake", "monkey",
    "hand", "rabbit", "duck", "cat", "cow", "fish", "train", "horse", "turtle", "bear", "motorbike",
    "giraffe", "leopard", "fox", "deer", "owl", "surfboard", "airplane", "truck", "zebra", "tiger",
    "elephant", "snowboard", "boat", "shark", "mouse", "frog", "eagle", "earless_seal", "tennis_racket",
)

# Categories of the synthetic data set (vita_deploy.data.synthetic), in dataset-id order 1..K.
SYNTHETIC_CLASSES = ("circle", "square", "triangle", "star", "ring")


def r50_config() -> ModelConfig:
    """Official VITA R-50 on YouTube-VIS 2019 (40 classes)."""
    return ModelConfig(name="r50", num_classes=40, class_names=YTVIS_2019_CLASSES)


def tiny_config() -> ModelConfig:
    """Same architecture at a size that trains on 2 CPU cores: width 64, 3 decoder layers, 20 queries."""
    return ModelConfig(
        name="tiny",
        num_classes=len(SYNTHETIC_CLASSES),
        class_names=SYNTHETIC_CLASSES,
        backbone=BackboneConfig(blocks_per_stage=(1, 1, 1, 1), stem_channels=16, res2_channels=32),
        pixel_decoder=PixelDecoderConfig(conv_dim=64, mask_dim=64, num_layers=2, num_heads=4, num_points=4,
                                         ffn_dim=256, norm_groups=8),
        frame_decoder=FrameDecoderConfig(hidden_dim=64, num_queries=20, num_heads=4, ffn_dim=256, num_layers=3),
        vita=VitaConfig(hidden_dim=64, num_heads=4, ffn_dim=256, enc_layers=2, dec_layers=2, window_size=6,
                        num_queries=20),
        input=InputConfig(min_size_test=160, max_size_test=320),
        inference=InferenceConfig(chunk_size=18, interpolate_chunk_size=5, topk=10),
    )


CONFIGS = {"r50": r50_config, "tiny": tiny_config}


def get_config(name: str) -> ModelConfig:
    """Config by name: 'r50' or 'tiny'."""
    try:
        return CONFIGS[name]()
    except KeyError:
        raise ValueError(f"unknown config {name!r}; choose one of {sorted(CONFIGS)}") from None
