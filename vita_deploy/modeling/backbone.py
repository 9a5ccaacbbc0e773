"""ResNet backbone with detectron2 parameter names, so official checkpoints load as they are.

detectron2 `build_resnet_backbone` with STRIDE_IN_1X1=False (the 3x3 conv carries the stride), FrozenBN
everywhere, FREEZE_AT=0, outputs res2..res5 at strides 4, 8, 16, 32. Parameter names follow detectron2:
`stem.conv1.weight`, `stem.conv1.norm.running_mean`, `res2.0.shortcut.weight`, `res3.1.conv2.norm.bias`, ...
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from vita_deploy.config import BackboneConfig


class FrozenBatchNorm2d(nn.Module):
    """BatchNorm with fixed statistics and affine parameters (all buffers: never trained)."""

    def __init__(self, num_features: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features) - eps)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):  # noqa: D401 - torch hook
        # detectron2/torchvision checkpoints may carry BN's `num_batches_tracked`; it means nothing here.
        state_dict.pop(prefix + "num_batches_tracked", None)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        shift = self.bias - self.running_mean * scale
        return x * scale[None, :, None, None] + shift[None, :, None, None]


class Conv2dNorm(nn.Conv2d):
    """detectron2's Conv2d: a convolution that owns its norm (`<name>.norm.*`) and optional ReLU."""

    def __init__(self, *args, norm: nn.Module | None = None, relu: bool = False, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.norm = norm
        self.relu = relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = super().forward(x)
        if self.norm is not None:
            x = self.norm(x)
        return F.relu(x) if self.relu else x


def fold_frozen_batchnorm(module: nn.Module) -> nn.Module:
    """A copy of `module` in which every Conv2dNorm's FrozenBatchNorm2d is folded into the convolution
    (weight * scale per output channel, bias * scale + shift): the same function with one op less per convolution.

    The exporter uses it so that ONNX graphs carry plain convolutions: an INT8 quantizer then quantizes the output
    the next layer actually receives (not the pre-norm output), and ONNX Runtime fuses Conv + ReLU into one
    QLinearConv instead of running Dequantize, Mul and Add on every feature map. Returns `module` itself when it
    has no frozen norm (Swin)."""
    if not any(isinstance(m, Conv2dNorm) and isinstance(m.norm, FrozenBatchNorm2d) for m in module.modules()):
        return module
    folded = copy.deepcopy(module)
    with torch.no_grad():
        for m in folded.modules():
            if isinstance(m, Conv2dNorm) and isinstance(m.norm, FrozenBatchNorm2d):
                norm = m.norm
                scale = norm.weight * (norm.running_var + norm.eps).rsqrt()  # (C_out,)
                shift = norm.bias - norm.running_mean * scale
                bias = shift if m.bias is None else m.bias * scale + shift
                m.weight.mul_(scale.to(m.weight.dtype).view(-1, 1, 1, 1))
                m.bias = nn.Parameter(bias.to(m.weight.dtype), requires_grad=m.weight.requires_grad)
                m.norm = None
    return folded


class BottleneckBlock(nn.Module):
    """1x1 -> 3x3 (stride) -> 1x1 with a projection shortcut when the shape changes."""

    def __init__(self, in_channels: int, out_channels: int, bottleneck_channels: int, stride: int) -> None:
        super().__init__()
        if in_channels != out_channels or stride != 1:
            self.shortcut = Conv2dNorm(in_channels, out_channels, 1, stride=stride, bias=False,
                                       norm=FrozenBatchNorm2d(out_channels))
        else:
            self.shortcut = None
        self.conv1 = Conv2dNorm(in_channels, bottleneck_channels, 1, bias=False,
                                norm=FrozenBatchNorm2d(bottleneck_channels), relu=True)
        self.conv2 = Conv2dNorm(bottleneck_channels, bottleneck_channels, 3, stride=stride, padding=1, bias=False,
                                norm=FrozenBatchNorm2d(bottleneck_channels), relu=True)
        self.conv3 = Conv2dNorm(bottleneck_channels, out_channels, 1, bias=False, norm=FrozenBatchNorm2d(out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.shortcut is None else self.shortcut(x)
        out = self.conv3(self.conv2(self.conv1(x)))
        return F.relu(out + identity)


class BasicStem(nn.Module):
    """7x7/2 conv + FrozenBN + ReLU, then 3x3/2 max-pool: stride 4."""

    def __init__(self, out_channels: int) -> None:
        super().__init__()
        self.conv1 = Conv2dNorm(3, out_channels, 7, stride=2, padding=3, bias=False,
                                norm=FrozenBatchNorm2d(out_channels), relu=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.max_pool2d(self.conv1(x), kernel_size=3, stride=2, padding=1)


class ResNet(nn.Module):
    """images (N, 3, H, W) -> {"res2": (N, C2, H/4, W/4), ..., "res5": (N, C5, H/32, W/32)}."""

    def __init__(self, cfg: BackboneConfig) -> None:
        super().__init__()
        self.stem = BasicStem(cfg.stem_channels)
        in_channels = cfg.stem_channels
        self.stage_names = [f"res{i + 2}" for i in range(4)]
        for i, (name, num_blocks) in enumerate(zip(self.stage_names, cfg.blocks_per_stage)):
            out_channels = cfg.res2_channels * 2**i
            blocks = []
            for b in range(num_blocks):
                stride = 2 if (b == 0 and i > 0) else 1
                blocks.append(BottleneckBlock(in_channels, out_channels, out_channels // cfg.bottleneck_ratio, stride))
                in_channels = out_channels
            self.add_module(name, nn.Sequential(*blocks))
        self.out_channels = cfg.out_channels

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.stem(x)
        outputs = {}
        for name in self.stage_names:
            x = getattr(self, name)(x)
            outputs[name] = x
        return outputs


def build_backbone(cfg: BackboneConfig) -> ResNet:
    return ResNet(cfg)
