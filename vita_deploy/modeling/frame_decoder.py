"""Masked-attention transformer decoder of the frame detector (VITA's Mask2Former decoder variant).

`vita/modeling/transformer_decoder/vita_mask2former_transformer_decoder.py`: learned queries attend to one
feature level per layer (cycling 1/32 -> 1/16 -> 1/8), restricted to the foreground of the previous mask
prediction; each layer is cross-attention -> self-attention -> FFN, post-norm. The post-LayerNorm query of
every layer is a "frame query", VITA's object token. Parameter names match `sem_seg_head.predictor.*`.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from vita_deploy.config import FrameDecoderConfig
from vita_deploy.modeling.position_encoding import sine_position_encoding
from vita_deploy.modeling.transformer_layers import (MASK_BIAS, MLP, LayerNorm, CrossAttentionLayer, FFNLayer,
                                                     SelfAttentionLayer)


@dataclass
class FrameDecoderOutput:
    """frame_queries (layers, N, fQ, C) post-norm per layer; pred_logits (P, N, fQ, K+1) and pred_masks
    (P, N, fQ, Hm, Wm) for all P = layers + 1 predictions (None when only the frame queries were asked for)."""

    frame_queries: torch.Tensor
    pred_logits: torch.Tensor | None = None
    pred_masks: torch.Tensor | None = None


def mask_attention_bias(mask_logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Mask logits (N, Q, Hm, Wm) -> additive bias (N, 1, Q, h*w) that blocks the predicted background.

    The prediction is bilinearly resized to the attended level and `sigmoid < 0.5` is blocked; a query whose
    whole row would be blocked attends everywhere instead (the official reset of fully-masked rows).
    """
    resized = F.interpolate(mask_logits, size=size, mode="bilinear", align_corners=False)
    blocked = resized.flatten(2).sigmoid() < 0.5  # (N, Q, h*w)
    blocked = blocked & ~blocked.all(-1, keepdim=True)
    return (blocked.to(torch.float32) * MASK_BIAS)[:, None].detach()


class MaskedTransformerDecoder(nn.Module):
    def __init__(self, cfg: FrameDecoderConfig, num_classes: int, mask_dim: int, num_levels: int = 3) -> None:
        super().__init__()
        c = cfg.hidden_dim
        self.num_layers, self.num_levels, self.hidden_dim = cfg.num_layers, num_levels, c
        self.transformer_self_attention_layers = nn.ModuleList(
            SelfAttentionLayer(c, cfg.num_heads) for _ in range(cfg.num_layers))
        self.transformer_cross_attention_layers = nn.ModuleList(
            CrossAttentionLayer(c, cfg.num_heads) for _ in range(cfg.num_layers))
        self.transformer_ffn_layers = nn.ModuleList(FFNLayer(c, cfg.ffn_dim) for _ in range(cfg.num_layers))
        self.decoder_norm = LayerNorm(c)
        self.query_feat = nn.Embedding(cfg.num_queries, c)
        self.query_embed = nn.Embedding(cfg.num_queries, c)
        self.level_embed = nn.Embedding(num_levels, c)
        self.class_embed = nn.Linear(c, num_classes + 1)
        self.mask_embed = MLP(c, c, mask_dim, 3)

    def _heads(self, output: torch.Tensor, mask_features: torch.Tensor, with_class: bool
               ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """output (Q, N, C) -> normed query (N, Q, C), class logits (N, Q, K+1) | None, mask logits (N, Q, Hm, Wm)."""
        query = self.decoder_norm(output).transpose(0, 1)
        logits = self.class_embed(query) if with_class else None
        masks = torch.einsum("nqc,nchw->nqhw", self.mask_embed(query), mask_features)
        return query, logits, masks

    def forward(self, multi_scale_features: list[torch.Tensor], mask_features: torch.Tensor,
                last_only: bool = False) -> FrameDecoderOutput:
        """multi_scale_features [(N, C, h_l, w_l)] at 1/32, 1/16, 1/8; mask_features (N, C, Hm, Wm).

        last_only: return only the last layer's frame queries (inference/export), skipping the class head and
        the final mask prediction, which VITA does not use.
        """
        n = mask_features.shape[0]
        sizes = [tuple(x.shape[-2:]) for x in multi_scale_features]
        # (N, C, h, w) -> (h*w, N, C)
        pos = [sine_position_encoding(x, self.hidden_dim // 2).flatten(2).permute(2, 0, 1) for x in multi_scale_features]
        src = [(x.flatten(2) + self.level_embed.weight[i][None, :, None]).permute(2, 0, 1)
               for i, x in enumerate(multi_scale_features)]
        query_pos = self.query_embed.weight[:, None].repeat(1, n, 1)  # (Q, N, C)
        output = self.query_feat.weight[:, None].repeat(1, n, 1)

        _, logits, masks = self._heads(output, mask_features, with_class=not last_only)
        all_logits, all_masks, frame_queries = [logits], [masks], []
        for i in range(self.num_layers):
            level = i % self.num_levels
            bias = mask_attention_bias(masks, sizes[level])
            output = self.transformer_cross_attention_layers[i](output, src[level], pos[level], query_pos, bias)
            output = self.transformer_self_attention_layers[i](output, query_pos)
            output = self.transformer_ffn_layers[i](output)
            if last_only and i == self.num_layers - 1:
                return FrameDecoderOutput(frame_queries=self.decoder_norm(output).transpose(0, 1)[None])
            query, logits, masks = self._heads(output, mask_features, with_class=not last_only)
            frame_queries.append(query)
            all_logits.append(logits)
            all_masks.append(masks)
        return FrameDecoderOutput(torch.stack(frame_queries), torch.stack(all_logits), torch.stack(all_masks))


def build_frame_decoder(cfg: FrameDecoderConfig, num_classes: int, mask_dim: int) -> MaskedTransformerDecoder:
    return MaskedTransformerDecoder(cfg, num_classes, mask_dim)
