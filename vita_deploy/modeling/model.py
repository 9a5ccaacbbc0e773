"""The two graphs of VITA, split at the object-token boundary (vita_spec.md section 7), and the full model.

    images (N, 3, H, W) --FrameDetector--> frame_queries (N, fQ, C), mask_features (N, C, H/4, W/4)
    frame_queries of all T frames (T, fQ, C) --VitaHead--> class_logits (cQ, K+1), mask_embed (cQ, C)
    images (N, 3, H, W) --MaskFeatureGraph--> mask_features (N, C, H/4, W/4)   (recompute mode, no decoder)

Nothing else crosses the boundary. Video masks are `einsum("qc,tchw->qthw", mask_embed, mask_features)`,
computed in post-processing (`vita_deploy.pipeline.inference`).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from vita_deploy.config import ModelConfig, SwinConfig
from vita_deploy.modeling.backbone import build_backbone
from vita_deploy.modeling.frame_decoder import build_frame_decoder
from vita_deploy.modeling.pixel_decoder import build_pixel_decoder, c2_xavier_fill
from vita_deploy.modeling.swin import SwinTransformer
from vita_deploy.modeling.vita_head import VitaHead, VitaHeadTrainOutput, build_vita_head


@dataclass
class FrameDetectorTrainOutput:
    """Per-frame outputs for the losses (P = frame-decoder layers + 1 predictions, N frames).

    pred_logits (P, N, fQ, K+1); pred_masks (P, N, fQ, H/4, W/4); frame_queries (L, N, fQ, C) of the last
    L = `num_last_layers` layers; mask_features (N, C, H/4, W/4), VITA's mask features.
    """

    pred_logits: torch.Tensor
    pred_masks: torch.Tensor
    frame_queries: torch.Tensor
    mask_features: torch.Tensor


class FrameDetector(nn.Module):
    """Mask2Former frame detector plus VITA's mask-features conv: backbone -> pixel decoder -> decoder."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.num_last_layers = cfg.frame_decoder.num_last_layers
        # ResNet-50/101 (detectron2) or Swin (Mask2Former's D2SwinTransformer), as the config says.
        self.backbone = (SwinTransformer(cfg.backbone) if isinstance(cfg.backbone, SwinConfig)
                         else build_backbone(cfg.backbone))
        self.pixel_decoder = build_pixel_decoder(cfg.pixel_decoder, cfg.backbone.out_channels)
        self.predictor = build_frame_decoder(cfg.frame_decoder, cfg.num_classes, cfg.pixel_decoder.mask_dim)
        # `vita_module.vita_mask_features` in the official checkpoint; applied to the stride-4 FPN map.
        self.vita_mask_features = nn.Conv2d(cfg.pixel_decoder.conv_dim, cfg.pixel_decoder.mask_dim, 1)
        c2_xavier_fill(self.vita_mask_features)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """images (N, 3, H, W), normalised and zero-padded to a multiple of 32
        -> frame_queries (N, fQ, C) of the last decoder layer, mask_features (N, C, H/4, W/4)."""
        mask_features, clip_mask_features, multi_scale = self.pixel_decoder(self.backbone(images))
        out = self.predictor(multi_scale, mask_features, last_only=True)
        return out.frame_queries[-1], self.vita_mask_features(clip_mask_features)

    def mask_features(self, images: torch.Tensor) -> torch.Tensor:
        """The mask-feature graph: images (N, 3, H, W) -> VITA's mask_features (N, C, H/4, W/4), equal to
        `forward(images)[1]` without the frame decoder (recompute mode re-runs only this)."""
        clip_mask_features, _ = self.pixel_decoder.encode(self.backbone(images))
        return self.vita_mask_features(clip_mask_features)

    def forward_train(self, images: torch.Tensor) -> FrameDetectorTrainOutput:
        mask_features, clip_mask_features, multi_scale = self.pixel_decoder(self.backbone(images))
        out = self.predictor(multi_scale, mask_features)
        return FrameDetectorTrainOutput(
            pred_logits=out.pred_logits,
            pred_masks=out.pred_masks,
            frame_queries=out.frame_queries[-self.num_last_layers:],
            mask_features=self.vita_mask_features(clip_mask_features),
        )


class MaskFeatureGraph(nn.Module):
    """A frame detector's mask-feature graph (backbone -> pixel decoder -> VITA's mask-features conv) as a
    module of its own, for export: the submodules are the detector's own (shared weights, same state-dict keys)."""

    def __init__(self, detector: FrameDetector) -> None:
        super().__init__()
        self.backbone = detector.backbone
        self.pixel_decoder = detector.pixel_decoder
        self.vita_mask_features = detector.vita_mask_features

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images (N, 3, H, W) -> mask_features (N, C, H/4, W/4)."""
        clip_mask_features, _ = self.pixel_decoder.encode(self.backbone(images))
        return self.vita_mask_features(clip_mask_features)


class VitaModel(nn.Module):
    """Both graphs together: the unit that is trained, checkpointed and exported."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.frame_detector = FrameDetector(cfg)
        self.vita_head: VitaHead = build_vita_head(cfg.vita, cfg.num_classes, cfg.frame_decoder.num_queries,
                                                   cfg.pixel_decoder.mask_dim)

    def forward(self, images: torch.Tensor) -> tuple[FrameDetectorTrainOutput, VitaHeadTrainOutput, torch.Tensor]:
        """Training forward (what the losses need; inference runs the two graphs separately, see
        `vita_deploy.pipeline.inference`). images (B, T, 3, H, W) normalised and padded -> per-frame outputs, VITA
        outputs and the video mask features (B, T, C, H/4, W/4).
        Video mask logits: einsum("...qc,btchw->...qthw", mask_embed, features)."""
        b, t = images.shape[:2]
        frame_out = self.frame_detector.forward_train(images.flatten(0, 1))
        num_layers, _, fq, c = frame_out.frame_queries.shape
        frame_queries = frame_out.frame_queries.view(num_layers, b, t, fq, c)
        vita_out = self.vita_head.forward_train(frame_queries)
        mask_features = frame_out.mask_features.view(b, t, *frame_out.mask_features.shape[1:])
        return frame_out, vita_out, mask_features


def build_model(cfg: ModelConfig) -> VitaModel:
    return VitaModel(cfg)
