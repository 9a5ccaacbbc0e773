"""Typed configs for VITA, one frozen dataclass per stage.

The official VITA model zoo, named `<backbone>-<dataset>` (`config_names()`): `r50-ytvis19` (alias `r50`),
`r50-ytvis21`, `r50-ovis`, `r101-ytvis19`, `r101-ytvis21`, `swinl-ytvis19`, `swinl-ytvis21`, `swinl-ovis`, with
the settings of the official yamls (`configs/{youtubevis_2019,youtubevis_2021,ovis}/vita_{R50,R101,SWIN}_bs8.yaml`
merged with their bases: backbone, frame queries, test size, top-k, training recipe) and the category names of
each dataset's registration file (`vita/data/datasets/ytvis.py`, `ovis.py`). `tiny` is the R-50 architecture
scaled down so that it trains on 2 CPU cores in minutes. All are built by `vita_deploy.modeling.model.build_model`.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any


@dataclass(frozen=True)
class BackboneConfig:
    """detectron2-style ResNet (bottleneck blocks, FrozenBN, STRIDE_IN_1X1=False); R-101 is (3, 4, 23, 3)."""

    kind: str = field(default="resnet", init=False)
    blocks_per_stage: tuple[int, int, int, int] = (3, 4, 6, 3)
    stem_channels: int = 64
    res2_channels: int = 256  # output channels of res2; doubled at every later stage
    bottleneck_ratio: int = 4  # bottleneck width = out_channels // bottleneck_ratio

    @property
    def out_channels(self) -> dict[str, int]:
        return {f"res{i + 2}": self.res2_channels * 2**i for i in range(4)}


@dataclass(frozen=True)
class SwinConfig:
    """Mask2Former's `D2SwinTransformer` (MODEL.SWIN.*); defaults are the zoo's Swin-L (IN-21k, 384)."""

    kind: str = field(default="swin", init=False)
    embed_dim: int = 192
    depths: tuple[int, int, int, int] = (2, 2, 18, 2)
    num_heads: tuple[int, int, int, int] = (6, 12, 24, 48)
    window_size: int = 12
    patch_size: int = 4
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    ape: bool = False  # absolute position embedding (off in every VITA config)
    patch_norm: bool = True
    pretrain_img_size: int = 384  # only sizes the (unused) absolute position embedding
    drop_path_rate: float = 0.3  # stochastic depth in training; inert at eval

    def __post_init__(self) -> None:
        if len(self.depths) != 4 or len(self.num_heads) != 4:
            raise ValueError("Swin needs 4 stages (res2..res5): depths and num_heads of length 4")
        for i, heads in enumerate(self.num_heads):
            if (self.embed_dim * 2**i) % heads:
                raise ValueError(f"stage {i}: width {self.embed_dim * 2**i} is not divisible by {heads} heads")

    @property
    def out_channels(self) -> dict[str, int]:
        return {f"res{i + 2}": self.embed_dim * 2**i for i in range(4)}


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
class TrainRecipeConfig:
    """The official training recipe (SOLVER, INPUT and DATASETS of the yaml); `train` takes its defaults from it.

    The official runs start from a COCO-pretrained VITA (`vita_<backbone>_coco.pth`) and mix COCO pseudo-videos
    with the video dataset at `dataset_ratio`.
    """

    train_datasets: tuple[str, ...] = ("coco2ytvis2019_train", "ytvis_2019_train")
    dataset_ratio: tuple[float, ...] = (1.0, 0.75)
    sampling_frame_num: int = 5
    sampling_frame_range: int = 20
    ims_per_batch: int = 8  # clips per iteration, all GPUs together
    base_lr: float = 5e-5
    max_iter: int = 140000
    steps: tuple[int, ...] = (75000,)  # lr x0.1 at each
    warmup_iters: int = 10
    weight_decay: float = 0.05
    backbone_multiplier: float = 0.1
    clip_gradients: float = 0.01  # full model, L2
    min_size_train: tuple[int, ...] = (288, 320, 352, 384, 416, 448, 480, 512)  # choice_by_clip
    max_size_train: int = 768
    crop_size: tuple[int, int] = (384, 600)  # absolute_range crop
    crop_resize_sizes: tuple[int, ...] = (400, 500, 600)  # shortest edge before the crop (VITA's build_augmentation)
    amp: bool = True

    @property
    def lr_step_fractions(self) -> tuple[float, ...]:
        """`steps` as fractions of `max_iter` (the trainer's `lr_steps`)."""
        return tuple(s / self.max_iter for s in self.steps)


@dataclass(frozen=True)
class ModelConfig:
    name: str = "r50-ytvis19"
    num_classes: int = 40
    class_names: tuple[str, ...] = ()
    dataset: str = "ytvis19"
    backbone: BackboneConfig | SwinConfig = field(default_factory=BackboneConfig)
    pixel_decoder: PixelDecoderConfig = field(default_factory=PixelDecoderConfig)
    frame_decoder: FrameDecoderConfig = field(default_factory=FrameDecoderConfig)
    vita: VitaConfig = field(default_factory=VitaConfig)
    input: InputConfig = field(default_factory=InputConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)
    train: TrainRecipeConfig = field(default_factory=TrainRecipeConfig)

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
            "vita": VitaConfig, "input": InputConfig, "inference": InferenceConfig, "train": TrainRecipeConfig,
        }
        kwargs: dict[str, Any] = {}
        for key, value in d.items():
            if key in subs:
                sub = subs[key]
                if key == "backbone":  # files written before Swin have no "kind": ResNet
                    sub = SwinConfig if value.get("kind", "resnet") == "swin" else BackboneConfig
                kwargs[key] = sub(**{k: tuple(v) if isinstance(v, list) else v for k, v in value.items()
                                     if k != "kind"})
            elif key == "class_names":
                kwargs[key] = tuple(value)
            elif key == "name":
                kwargs[key] = ALIASES.get(value, value)  # files written when r50-ytvis19 was called "r50"
            else:
                kwargs[key] = value
        return cls(**kwargs)

    def with_num_classes(self, num_classes: int, class_names: tuple[str, ...] = ()) -> "ModelConfig":
        return replace(self, num_classes=num_classes, class_names=tuple(class_names))


# Category names in dataset-id order 1..K (contiguous index i <-> dataset id i + 1), as registered by the
# official `vita/data/datasets/ytvis.py` (YTVIS_CATEGORIES_2019 / _2021) and `ovis.py` (OVIS_CATEGORIES).
YTVIS_2019_CLASSES = (
    "person", "giant_panda", "lizard", "parrot", "skateboard", "sedan", "ape", "dog", "snake", "monkey",
    "hand", "rabbit", "duck", "cat", "cow", "fish", "train", "horse", "turtle", "bear", "motorbike",
    "giraffe", "leopard", "fox", "deer", "owl", "surfboard", "airplane", "truck", "zebra", "tiger",
    "elephant", "snowboard", "boat", "shark", "mouse", "frog", "eagle", "earless_seal", "tennis_racket",
)
YTVIS_2021_CLASSES = (
    "airplane", "bear", "bird", "boat", "car", "cat", "cow", "deer", "dog", "duck",
    "earless_seal", "elephant", "fish", "flying_disc", "fox", "frog", "giant_panda", "giraffe", "horse", "leopard",
    "lizard", "monkey", "motorbike", "mouse", "parrot", "person", "rabbit", "shark", "skateboard", "snake",
    "snowboard", "squirrel", "surfboard", "tennis_racket", "tiger", "train", "truck", "turtle", "whale", "zebra",
)
OVIS_CLASSES = (  # spelling as registered ("Vehical" included)
    "Person", "Bird", "Cat", "Dog", "Horse", "Sheep", "Cow", "Elephant", "Bear", "Zebra",
    "Giraffe", "Poultry", "Giant_panda", "Lizard", "Parrot", "Monkey", "Rabbit", "Tiger", "Fish", "Turtle",
    "Bicycle", "Motorcycle", "Airplane", "Boat", "Vehical",
)

# Categories of the synthetic data set (vita_deploy.data.synthetic), in dataset-id order 1..K.
SYNTHETIC_CLASSES = ("circle", "square", "triangle", "star", "ring")

R101 = BackboneConfig(blocks_per_stage=(3, 4, 23, 3))
SWIN_L = SwinConfig()

# Per dataset: class names, top-k (TEST.DETECTIONS_PER_IMAGE) and the training recipe of its yamls.
_DATASETS: dict[str, tuple[tuple[str, ...], int, TrainRecipeConfig]] = {
    "ytvis19": (YTVIS_2019_CLASSES, 10, TrainRecipeConfig()),
    "ytvis21": (YTVIS_2021_CLASSES, 10, TrainRecipeConfig(
        train_datasets=("coco2ytvis2021_train", "ytvis_2021_train"), dataset_ratio=(1.0, 0.8),
        sampling_frame_num=6, sampling_frame_range=8, max_iter=187500, steps=(100000,))),
    "ovis": (OVIS_CLASSES, 20, TrainRecipeConfig(
        train_datasets=("coco2ovis_train", "ovis_train"), dataset_ratio=(1.0, 0.25),
        sampling_frame_num=6, sampling_frame_range=8, max_iter=150000, steps=(50000, 125000))),
}


def zoo_config(backbone: str, dataset: str) -> ModelConfig:
    """Official VITA config for backbone 'r50' | 'r101' | 'swinl' on dataset 'ytvis19' | 'ytvis21' | 'ovis'.

    Swin-L differs from R-50 in the backbone, 200 frame queries (NUM_OBJECT_QUERIES; VITA's 100 video queries
    stay) and MIN_SIZE_TEST 448; R-101 only in the backbone depth. The dataset sets classes, top-k and recipe.
    """
    names, topk, recipe = _DATASETS[dataset]
    kwargs: dict[str, Any] = {}
    if backbone == "r101":
        kwargs["backbone"] = R101
    elif backbone == "swinl":
        kwargs.update(backbone=SWIN_L, frame_decoder=FrameDecoderConfig(num_queries=200),
                      input=InputConfig(min_size_test=448))
    elif backbone != "r50":
        raise ValueError(f"unknown backbone {backbone!r}")
    return ModelConfig(name=f"{backbone}-{dataset}", num_classes=len(names), class_names=names, dataset=dataset,
                       inference=InferenceConfig(topk=topk), train=recipe, **kwargs)


def r50_config() -> ModelConfig:
    """Official VITA R-50 on YouTube-VIS 2019 (40 classes): `r50-ytvis19`."""
    return zoo_config("r50", "ytvis19")


def tiny_config() -> ModelConfig:
    """Same architecture at a size that trains on 2 CPU cores: width 64, 3 decoder layers, 20 queries."""
    return ModelConfig(
        name="tiny",
        num_classes=len(SYNTHETIC_CLASSES),
        class_names=SYNTHETIC_CLASSES,
        dataset="synthetic",
        backbone=BackboneConfig(blocks_per_stage=(1, 1, 1, 1), stem_channels=16, res2_channels=32),
        pixel_decoder=PixelDecoderConfig(conv_dim=64, mask_dim=64, num_layers=2, num_heads=4, num_points=4,
                                         ffn_dim=256, norm_groups=8),
        frame_decoder=FrameDecoderConfig(hidden_dim=64, num_queries=20, num_heads=4, ffn_dim=256, num_layers=3),
        vita=VitaConfig(hidden_dim=64, num_heads=4, ffn_dim=256, enc_layers=2, dec_layers=2, window_size=6,
                        num_queries=20),
        input=InputConfig(min_size_test=160, max_size_test=320),
        inference=InferenceConfig(chunk_size=18, interpolate_chunk_size=5, topk=10),
        # The shipped tiny checkpoint's recipe (MODEL_CARD.md): from scratch, so the backbone trains at full lr.
        train=TrainRecipeConfig(train_datasets=("synthetic",), dataset_ratio=(1.0,), sampling_frame_num=3,
                                sampling_frame_range=10, ims_per_batch=4, base_lr=1e-3, max_iter=2400,
                                steps=(1920,), warmup_iters=100, backbone_multiplier=1.0,
                                min_size_train=(128, 144, 160, 176), max_size_train=256, crop_size=(112, 176),
                                crop_resize_sizes=(144, 160, 192)),
    )


ZOO = tuple(f"{b}-{d}" for b, ds in (("r50", ("ytvis19", "ytvis21", "ovis")), ("r101", ("ytvis19", "ytvis21")),
                                     ("swinl", ("ytvis19", "ytvis21", "ovis"))) for d in ds)
CONFIGS = {**{name: (lambda n=name: zoo_config(*n.split("-"))) for name in ZOO}, "tiny": tiny_config}
ALIASES = {"r50": "r50-ytvis19"}


def config_names() -> tuple[str, ...]:
    """Every name `get_config` accepts (for `--config` choices): the zoo, `tiny`, then aliases."""
    return (*CONFIGS, *ALIASES)


def canonical_config_name(name: str) -> str:
    """'r50' -> 'r50-ytvis19'; other names unchanged."""
    return ALIASES.get(name, name)


def get_config(name: str) -> ModelConfig:
    """Config by name (see `config_names()`); an alias returns its config (whose `name` is the full name)."""
    try:
        return CONFIGS[canonical_config_name(name)]()
    except KeyError:
        raise ValueError(f"unknown config {name!r}; choose one of {', '.join(config_names())}") from None
