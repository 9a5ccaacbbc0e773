"""Attention, FFN and MLP layers shared by the frame decoder and the VITA head.

Sequence-first tensors (L, N, C) as in the official code, post-norm, dropout 0. Attention masks are finite
additive biases (never -inf or booleans), and the softmax runs in fp32, so a fully masked row stays finite
and the same graph exports to ONNX/TensorRT in fp32 and fp16. Parameter names match `nn.MultiheadAttention`
(`in_proj_weight`, `in_proj_bias`, `out_proj.*`) so official checkpoints load.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# Additive bias for blocked attention: exp(-1e4) is exactly 0 in fp32 and the value fits in fp16.
MASK_BIAS = -1.0e4


class MultiheadAttention(nn.Module):
    """Scaled dot-product multi-head attention with an optional additive bias."""

    def __init__(self, embed_dim: int, num_heads: int) -> None:
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
        self.embed_dim, self.num_heads = embed_dim, num_heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * embed_dim, embed_dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * embed_dim))
        self.out_proj = nn.Linear(embed_dim, embed_dim)
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                attn_bias: torch.Tensor | None = None) -> torch.Tensor:
        """query (Lq, N, C), key/value (Lk, N, C), attn_bias broadcastable to (N, heads, Lq, Lk) -> (Lq, N, C)."""
        lq, n, c = query.shape
        lk = key.shape[0]
        h, d = self.num_heads, c // self.num_heads
        w_q, w_k, w_v = self.in_proj_weight.chunk(3)
        b_q, b_k, b_v = self.in_proj_bias.chunk(3)
        # (L, N, C) -> (N, heads, L, d)
        q = F.linear(query, w_q, b_q).view(lq, n, h, d).permute(1, 2, 0, 3)
        k = F.linear(key, w_k, b_k).view(lk, n, h, d).permute(1, 2, 0, 3)
        v = F.linear(value, w_v, b_v).view(lk, n, h, d).permute(1, 2, 0, 3)
        logits = torch.matmul(q * d**-0.5, k.transpose(-2, -1)).float()  # (N, heads, Lq, Lk), fp32 island
        if attn_bias is not None:
            logits = logits + attn_bias.float()
        attn = logits.softmax(-1).to(v.dtype)
        out = torch.matmul(attn, v)  # (N, heads, Lq, d)
        return self.out_proj(out.permute(2, 0, 1, 3).reshape(lq, n, c))


class LayerNorm(nn.LayerNorm):
    """LayerNorm whose statistics are always computed in fp32 (an fp32 island in fp16 graphs; no-op in fp32)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x.float(), self.normalized_shape, self.weight.float(), self.bias.float(), self.eps).to(x.dtype)


class GroupNorm(nn.GroupNorm):
    """GroupNorm with fp32 statistics (an fp32 island in fp16 graphs; no-op in fp32)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.group_norm(x.float(), self.num_groups, self.weight.float(), self.bias.float(), self.eps).to(x.dtype)


def _xavier_init(module: nn.Module) -> None:
    for p in module.parameters():
        if p.dim() > 1:
            nn.init.xavier_uniform_(p)


class SelfAttentionLayer(nn.Module):
    """x = norm(x + SelfAttn(q=k=x+pos, v=x))."""

    def __init__(self, d_model: int, nhead: int) -> None:
        super().__init__()
        self.self_attn = MultiheadAttention(d_model, nhead)
        self.norm = LayerNorm(d_model)
        _xavier_init(self)

    def forward(self, tgt: torch.Tensor, query_pos: torch.Tensor | None = None,
                attn_bias: torch.Tensor | None = None) -> torch.Tensor:
        q = tgt if query_pos is None else tgt + query_pos
        return self.norm(tgt + self.self_attn(q, q, tgt, attn_bias))


class CrossAttentionLayer(nn.Module):
    """x = norm(x + Attn(q=x+query_pos, k=memory+pos, v=memory))."""

    def __init__(self, d_model: int, nhead: int) -> None:
        super().__init__()
        self.multihead_attn = MultiheadAttention(d_model, nhead)
        self.norm = LayerNorm(d_model)
        _xavier_init(self)

    def forward(self, tgt: torch.Tensor, memory: torch.Tensor, pos: torch.Tensor | None = None,
                query_pos: torch.Tensor | None = None, attn_bias: torch.Tensor | None = None) -> torch.Tensor:
        q = tgt if query_pos is None else tgt + query_pos
        k = memory if pos is None else memory + pos
        return self.norm(tgt + self.multihead_attn(q, k, memory, attn_bias))


class FFNLayer(nn.Module):
    """x = norm(x + linear2(relu(linear1(x))))."""

    def __init__(self, d_model: int, dim_feedforward: int) -> None:
        super().__init__()
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm = LayerNorm(d_model)
        _xavier_init(self)

    def forward(self, tgt: torch.Tensor) -> torch.Tensor:
        return self.norm(tgt + self.linear2(F.relu(self.linear1(tgt))))


class MLP(nn.Module):
    """`num_layers` Linear layers with ReLU between them (`layers.{i}.*`)."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int) -> None:
        super().__init__()
        dims = [input_dim] + [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x) if i == len(self.layers) - 1 else F.relu(layer(x))
        return x
