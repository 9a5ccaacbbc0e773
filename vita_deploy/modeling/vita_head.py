"""The VITA module: frame queries of a whole video -> video queries -> classes and mask embeddings.

`vita/modeling/transformer_decoder/vita.py` (L372-546). Frame queries (object tokens) of T frames are
projected, encoded by window self-attention over time (window W=6; at inference odd layers use windows
shifted by ceil(W/2) with a wrap-around mask), then `cQ` learned video queries cross-attend to all T*fQ
tokens. No image features cross this boundary, and there is no temporal position encoding: the key position
is `fq_pos`, which depends only on the frame-query slot. Parameter names match `vita_module.*`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from vita_deploy.config import VitaConfig
from vita_deploy.modeling.transformer_layers import (MASK_BIAS, MLP, LayerNorm, CrossAttentionLayer, FFNLayer,
                                                     SelfAttentionLayer)


@dataclass
class VitaHeadTrainOutput:
    """What the VITA losses need (L = frame-query copies, B videos, D decoder layers).

    pred_logits (D, L, B, cQ, K+1); pred_mask_embed (D, L, B, cQ, C); pred_fq_embed (L, B, T, fQ, C);
    pred_cq_embed (L, B, cQ, C) of the last decoder layer.
    """

    pred_logits: torch.Tensor
    pred_mask_embed: torch.Tensor
    pred_fq_embed: torch.Tensor
    pred_cq_embed: torch.Tensor


WINDOW_GROUP = 32  # windows per encoder batch in eager inference (bounds the encoder's memory on long videos)


def _eager_inference() -> bool:
    """Eager, no autograd, not being exported or compiled: where the encoder may run windows in groups."""
    return not (torch.is_grad_enabled() or torch.compiler.is_exporting() or torch.compiler.is_compiling())


def shifted_window_bias(pad_mask: torch.Tensor, window: int, num_queries: int) -> torch.Tensor:
    """Attention bias of the shifted windows: pad_mask (N, T_pad) True on padded frames -> (N*Nw, 1, W*fQ, W*fQ).

    After rolling time by ceil(W/2), the first window holds the wrapped-around end of the video next to its
    start: the two halves must not see each other. Padded frames in the first and last windows are blocked as
    keys and as queries (a blocked query row gets a uniform, finite softmax and is dropped later).
    """
    n, t_pad = pad_mask.shape
    nw, half = t_pad // window, math.ceil(window / 2)
    rolled = torch.roll(pad_mask, half, 1).view(n, nw, window)
    blocked = rolled[..., None].expand(n, nw, window, window)  # (N, Nw, Wq, Wk), rows of padded queries
    is_edge = torch.zeros(nw, dtype=torch.bool, device=pad_mask.device)
    is_edge[0] = True
    is_edge[-1] = True
    blocked = blocked | (blocked.transpose(-2, -1) & is_edge[None, :, None, None])
    split = torch.arange(window, device=pad_mask.device) < half
    first = (split[:, None] != split[None, :])  # (Wq, Wk): the two halves of the first window
    blocked = blocked | (first[None] & (torch.arange(nw, device=pad_mask.device) == 0)[:, None, None])[None]
    # (N, Nw, Wq, Wk) -> (N*Nw, 1, Wq*fQ, Wk*fQ)
    blocked = blocked[:, :, :, None, :, None].expand(n, nw, window, num_queries, window, num_queries)
    return (blocked.reshape(n * nw, 1, window * num_queries, window * num_queries).to(torch.float32) * MASK_BIAS)


class VitaHead(nn.Module):
    def __init__(self, cfg: VitaConfig, num_classes: int, num_frame_queries: int, mask_dim: int) -> None:
        super().__init__()
        c = cfg.hidden_dim
        self.window, self.num_queries, self.num_heads = cfg.window_size, cfg.num_queries, cfg.num_heads
        self.enc_self_attn = nn.ModuleList(SelfAttentionLayer(c, cfg.num_heads) for _ in range(cfg.enc_layers))
        self.enc_ffn = nn.ModuleList(FFNLayer(c, cfg.ffn_dim) for _ in range(cfg.enc_layers))
        self.transformer_cross_attention_layers = nn.ModuleList(
            CrossAttentionLayer(c, cfg.num_heads) for _ in range(cfg.dec_layers))
        self.transformer_self_attention_layers = nn.ModuleList(
            SelfAttentionLayer(c, cfg.num_heads) for _ in range(cfg.dec_layers))
        self.transformer_ffn_layers = nn.ModuleList(FFNLayer(c, cfg.ffn_dim) for _ in range(cfg.dec_layers))
        self.decoder_norm = LayerNorm(c)
        self.query_feat = nn.Embedding(cfg.num_queries, c)
        self.query_embed = nn.Embedding(cfg.num_queries, c)
        self.fq_pos = nn.Embedding(num_frame_queries, c)
        self.input_proj_dec = nn.Linear(c, c)  # ENFORCE_INPUT_PROJ: True
        self.class_embed = nn.Linear(c, num_classes + 1)
        self.mask_embed = MLP(c, c, mask_dim, 3)
        self.sim_embed_frame = nn.Linear(c, c)
        self.sim_embed_clip = nn.Linear(c, c)

    # -- encoder ---------------------------------------------------------------------------------------------
    def _window_layer(self, x: torch.Tensor, i: int, bias: torch.Tensor, shift: int) -> torch.Tensor:
        """One encoder layer over windows of W frames: x (T_pad, fQ, N, C), bias (N*Nw, 1|heads, W*fQ, *)."""
        t_pad, fq, n, c = x.shape
        nw = t_pad // self.window
        if shift:
            x = torch.roll(x, shift, 0)
        # (T_pad, fQ, N, C) -> (Nw, W, fQ, N, C) -> (W*fQ, N*Nw, C), window-major inside each video
        x = x.view(nw, self.window, fq, n, c).permute(1, 2, 3, 0, 4).reshape(self.window * fq, n * nw, c)
        if _eager_inference() and n * nw > WINDOW_GROUP:
            # Windows are independent: on long videos run them in groups, so the attention weights and FFN
            # activations stay bounded instead of growing with T (exported graphs keep the single batch).
            x = torch.cat([self.enc_ffn[i](self.enc_self_attn[i](x[:, j:j + WINDOW_GROUP],
                                                                 attn_bias=bias[j:j + WINDOW_GROUP]))
                           for j in range(0, n * nw, WINDOW_GROUP)], 1)
        else:
            x = self.enc_ffn[i](self.enc_self_attn[i](x, attn_bias=bias))
        x = x.reshape(self.window, fq, n, nw, c).permute(3, 0, 1, 2, 4).reshape(t_pad, fq, n, c)
        return torch.roll(x, -shift, 0) if shift else x

    def encode(self, x: torch.Tensor, shifted_windows: bool) -> torch.Tensor:
        """Frame queries (T, fQ, N, C) -> encoded (T, fQ, N, C). Zero-pads T to a multiple of W and masks the pad."""
        t, fq, n, _ = x.shape
        w = self.window
        t_pad = (t + w - 1) // w * w
        x = F.pad(x, (0, 0, 0, 0, 0, 0, 0, t_pad - t))
        pad_mask = (torch.arange(t_pad, device=x.device) >= t)[None].expand(n, t_pad)  # (N, T_pad)
        nw = t_pad // w
        # Plain windows: padded frames are blocked as keys. (N, T_pad) -> (N*Nw, 1, 1, W*fQ)
        key_bias = pad_mask.reshape(n * nw, w, 1).expand(n * nw, w, fq).reshape(n * nw, 1, 1, w * fq)
        key_bias = key_bias.to(torch.float32) * MASK_BIAS
        shift_bias = shifted_window_bias(pad_mask, w, fq) if shifted_windows else None
        for i in range(len(self.enc_self_attn)):
            if shifted_windows and i % 2 == 1:
                x = self._window_layer(x, i, shift_bias, math.ceil(w / 2))
            else:
                x = self._window_layer(x, i, key_bias, 0)
        return x[:t]

    # -- decoder ---------------------------------------------------------------------------------------------
    def decode(self, tokens: torch.Tensor, num_frames: int, all_layers: bool) -> torch.Tensor:
        """tokens (T*fQ, N, C) -> normed video queries (D or 1, N, cQ, C)."""
        n = tokens.shape[1]
        pos = self.fq_pos.weight.repeat(num_frames, 1)[:, None]  # (T*fQ, 1, C): slot index only
        query_pos = self.query_embed.weight[:, None].repeat(1, n, 1)  # (cQ, N, C)
        output = self.query_feat.weight[:, None].repeat(1, n, 1)
        outputs = []
        num_layers = len(self.transformer_cross_attention_layers)
        for i in range(num_layers):
            output = self.transformer_cross_attention_layers[i](output, tokens, pos, query_pos)
            output = self.transformer_self_attention_layers[i](output, query_pos)
            output = self.transformer_ffn_layers[i](output)
            if all_layers or i == num_layers - 1:
                outputs.append(self.decoder_norm(output).transpose(0, 1))
        return torch.stack(outputs)

    def forward(self, frame_queries: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Inference on one video: frame_queries (T, fQ, C) of the last frame-decoder layer
        -> class_logits (cQ, K+1), mask_embed (cQ, C). Odd encoder layers use shifted windows."""
        t, fq, c = frame_queries.shape
        x = self.input_proj_dec(frame_queries)[:, :, None]  # (T, fQ, 1, C)
        x = self.encode(x, shifted_windows=True)
        queries = self.decode(x.reshape(t * fq, 1, c), t, all_layers=False)[-1, 0]  # (cQ, C)
        return self.class_embed(queries), self.mask_embed(queries)

    def forward_with_clip_embed(self, frame_queries: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """`forward` plus the video queries' clip embeddings (`sim_embed_clip`, what `loss_vita_sim` trains to
        tell instances apart): frame_queries (T, fQ, C) -> class_logits (cQ, K+1), mask_embed (cQ, C),
        cq_embed (cQ, C). The windowed mode (vita_deploy.pipeline.windowed) links instances across windows with them."""
        t, fq, c = frame_queries.shape
        x = self.input_proj_dec(frame_queries)[:, :, None]  # (T, fQ, 1, C)
        x = self.encode(x, shifted_windows=True)
        queries = self.decode(x.reshape(t * fq, 1, c), t, all_layers=False)[-1, 0]  # (cQ, C)
        return self.class_embed(queries), self.mask_embed(queries), self.sim_embed_clip(queries)

    def forward_train(self, frame_queries: torch.Tensor, shifted_windows: bool = False) -> VitaHeadTrainOutput:
        """Training: frame_queries (L, B, T, fQ, C) (the last L frame-decoder layers) -> all decoder layers.

        The official training forward uses plain windows in every layer (`self.training or i % 2 == 0`).
        """
        l, b, t, fq, c = frame_queries.shape
        # (L, B, T, fQ, C) -> (T, fQ, L*B, C)
        x = self.input_proj_dec(frame_queries.reshape(l * b, t, fq, c).permute(1, 2, 0, 3))
        x = self.encode(x, shifted_windows=shifted_windows)
        tokens = x.reshape(t * fq, l * b, c)
        fq_embed = self.sim_embed_frame(tokens).transpose(0, 1).reshape(l, b, t, fq, c)
        queries = self.decode(tokens, t, all_layers=True)  # (D, L*B, cQ, C)
        d = queries.shape[0]
        queries = queries.view(d, l, b, self.num_queries, c)
        return VitaHeadTrainOutput(
            pred_logits=self.class_embed(queries),
            pred_mask_embed=self.mask_embed(queries),
            pred_fq_embed=fq_embed,
            pred_cq_embed=self.sim_embed_clip(queries[-1]),
        )


def build_vita_head(cfg: VitaConfig, num_classes: int, num_frame_queries: int, mask_dim: int) -> VitaHead:
    return VitaHead(cfg, num_classes, num_frame_queries, mask_dim)
