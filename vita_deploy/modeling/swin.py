"""Swin Transformer backbone with the parameter names of Mask2Former's `D2SwinTransformer`, so official VITA
Swin-L checkpoints load as they are (`backbone.patch_embed.*`, `backbone.layers.{i}.blocks.{j}.attn.qkv.*`,
`backbone.layers.{i}.downsample.*`, `backbone.norm{i}.*`).

Behaviour follows Mask2Former's `mask2former/modeling/backbone/swin.py` exactly at eval:
- patch embedding pads the image right/bottom to a multiple of the patch size, then a strided conv + LayerNorm;
- every block pads its (already LayerNorm-ed) map right/bottom with zeros to a multiple of the window; the padded
  tokens then take part in window attention as ordinary keys and queries (no mask for them: only the shifted-window
  region mask below), and are cut off after attention;
- odd blocks roll the padded map by -window//2 and add the official region mask (-100 between tokens of different
  regions; regions split the padded map at Hp - window and Hp - shift, likewise in W). A map smaller than the
  window is padded up to one window and still shifted and masked the same way (no clamping of the window size);
- patch merging pads odd sizes with zeros and concatenates (0,0), (1,0), (0,1), (1,1) (row, column) neighbours;
- res2..res5 are the stage outputs before merging, each through its own LayerNorm (`norm0..norm3`).
Internally maps are channels-last (N, H, W, C) instead of the official (N, H*W, C) token lists; same numbers.
Every size (padding, window counts, the mask) is computed from the input's H and W with tensor ops, so the
dynamo ONNX export keeps H and W symbolic. Softmax and LayerNorm statistics run in fp32 (fp32 islands in fp16).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vita_deploy.config import SwinConfig
from vita_deploy.modeling.transformer_layers import LayerNorm

SHIFT_MASK_VALUE = -100.0  # the official value for tokens of different shifted-window regions


def window_partition(x: torch.Tensor, ws: int) -> torch.Tensor:
    """(N, H, W, C) with H, W multiples of ws -> (N * H/ws * W/ws, ws, ws, C), windows row-major per image."""
    n, h, w, c = x.shape
    x = x.view(n, h // ws, ws, w // ws, ws, c)
    # contiguous: with one image and one window row, reshape would return a strided view of several windows that
    # the attention's `.view(-1, ws * ws, c)` cannot flatten
    return x.permute(0, 1, 3, 2, 4, 5).contiguous().view(-1, ws, ws, c)


def window_reverse(windows: torch.Tensor, ws: int, h: int, w: int) -> torch.Tensor:
    """Inverse of `window_partition`: (N * H/ws * W/ws, ws, ws, C) -> (N, H, W, C)."""
    c = windows.shape[-1]
    x = windows.view(-1, h // ws, w // ws, ws, ws, c)
    return x.permute(0, 1, 3, 2, 4, 5).contiguous().view(-1, h, w, c)


def relative_position_index(ws: int) -> torch.Tensor:
    """(ws*ws, ws*ws) int64: index into the (2ws-1)^2 bias table of the offset between tokens i and j."""
    coords = torch.stack(torch.meshgrid(torch.arange(ws), torch.arange(ws), indexing="ij")).flatten(1)  # (2, ws*ws)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (ws - 1)  # (ws*ws, ws*ws, 2) in 0..2ws-2
    return rel[..., 0] * (2 * ws - 1) + rel[..., 1]


def roll2d(x: torch.Tensor, shift: int) -> torch.Tensor:
    """torch.roll(x, (shift, shift), dims=(1, 2)) for (N, H, W, C) with |shift| < H, W (maps padded to whole
    windows are never smaller than a window), as constant slices + concat so the export needs no size guards."""
    if shift == 0:
        return x
    s = shift if shift > 0 else -shift
    if shift > 0:  # last s rows/columns come first
        x = torch.cat([x[:, -s:], x[:, :-s]], dim=1)
        return torch.cat([x[:, :, -s:], x[:, :, :-s]], dim=2)
    x = torch.cat([x[:, s:], x[:, :s]], dim=1)
    return torch.cat([x[:, :, s:], x[:, :, :s]], dim=2)


def shifted_window_mask(hp: int, wp: int, ws: int, shift: int, device: torch.device | None = None) -> torch.Tensor:
    """Official SW-MSA mask for a padded (hp, wp) map -> (nW, ws*ws, ws*ws) float32, 0 or -100.

    Region of row r: 0 below hp - ws, 1 in [hp - ws, hp - shift), 2 from hp - shift (the official slices
    (0, -ws), (-ws, -shift), (-shift, None)); columns alike; tokens in different regions are masked.
    """
    rows = torch.arange(hp, device=device)
    cols = torch.arange(wp, device=device)
    region_r = (rows >= hp - ws).long() + (rows >= hp - shift).long()
    region_c = (cols >= wp - ws).long() + (cols >= wp - shift).long()
    region = (region_r[:, None] * 3 + region_c[None, :])[None, :, :, None]  # (1, hp, wp, 1)
    windows = window_partition(region, ws).reshape(-1, ws * ws)  # (nW, ws*ws)
    return (windows[:, None, :] != windows[:, :, None]).float() * SHIFT_MASK_VALUE


class WindowAttention(nn.Module):
    """Multi-head self-attention inside ws x ws windows with a learned relative position bias."""

    def __init__(self, dim: int, window_size: int, num_heads: int, qkv_bias: bool = True) -> None:
        super().__init__()
        self.dim, self.window_size, self.num_heads = dim, window_size, num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window_size - 1) ** 2, num_heads))
        self.register_buffer("relative_position_index", relative_position_index(window_size))
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)

    def relative_position_bias(self) -> torch.Tensor:
        """(heads, ws*ws, ws*ws) bias added to every window's logits."""
        n = self.window_size**2
        return self.relative_position_bias_table[self.relative_position_index.view(-1)].view(n, n, -1).permute(2, 0, 1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """x (N * nW, ws*ws, C), mask (nW, ws*ws, ws*ws) or None -> (N * nW, ws*ws, C)."""
        b, n, c = x.shape
        qkv = self.qkv(x).view(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]  # (B, heads, n, d)
        logits = torch.matmul(q * self.scale, k.transpose(-2, -1)).float()  # fp32 island
        logits = logits + self.relative_position_bias().float()[None]
        if mask is not None:
            nw = mask.shape[0]
            logits = (logits.view(-1, nw, self.num_heads, n, n) + mask.float()[None, :, None]).view(b, self.num_heads, n, n)
        attn = logits.softmax(-1).to(v.dtype)
        return self.proj(torch.matmul(attn, v).transpose(1, 2).reshape(b, n, c))


class DropPath(nn.Module):
    """Stochastic depth per sample in training (identity at eval)."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(1.0 - self.p)
        return x * keep / (1.0 - self.p)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class SwinTransformerBlock(nn.Module):
    """LN -> pad to windows -> (shift) -> window attention -> (unshift) -> crop -> residual; LN -> MLP -> residual."""

    def __init__(self, dim: int, num_heads: int, window_size: int, shift_size: int, mlp_ratio: float,
                 qkv_bias: bool, drop_path: float) -> None:
        super().__init__()
        if not 0 <= shift_size < window_size:
            raise ValueError("shift_size must be in [0, window_size)")
        self.window_size, self.shift_size = window_size, shift_size
        self.norm1 = LayerNorm(dim)
        self.attn = WindowAttention(dim, window_size, num_heads, qkv_bias)
        self.drop_path = DropPath(drop_path)
        self.norm2 = LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None, nh: int | None = None,
                nw: int | None = None) -> torch.Tensor:
        """x (N, H, W, C); attn_mask (nW, ws*ws, ws*ws) of the padded map (used by shifted blocks); nh, nw: the
        window counts ceil(H/ws), ceil(W/ws) when the caller has them -> (N, H, W, C)."""
        n, h, w, c = x.shape
        ws = self.window_size
        shortcut = x
        x = self.norm1(x)
        # Pad to whole windows with zeros after the norm, as official. The padded size is written as
        # (number of windows) * ws so that the exporter's symbolic shapes stay simple (no Mod to prove).
        nh = (h + ws - 1) // ws if nh is None else nh
        nw = (w + ws - 1) // ws if nw is None else nw
        hp, wp = nh * ws, nw * ws
        x = F.pad(x, (0, 0, 0, wp - w, 0, hp - h))
        if self.shift_size:
            x = roll2d(x, -self.shift_size)
        windows = window_partition(x, ws).view(-1, ws * ws, c)
        windows = self.attn(windows, attn_mask if self.shift_size else None)
        x = window_reverse(windows.view(-1, ws, ws, c), ws, hp, wp)
        if self.shift_size:
            x = roll2d(x, self.shift_size)
        x = shortcut + self.drop_path(x[:, :h, :w])
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PatchMerging(nn.Module):
    """(N, H, W, C) -> (N, ceil(H/2), ceil(W/2), 2C): zero-pad odd sizes, concat 2x2 neighbours, LN, linear."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)
        self.norm = LayerNorm(4 * dim)

    def forward(self, x: torch.Tensor, h2: int | None = None, w2: int | None = None) -> torch.Tensor:
        """h2, w2: the output size ceil(H/2), ceil(W/2), when the caller has it in a simpler form for export."""
        n, h, w, c = x.shape
        h2 = (h + 1) // 2 if h2 is None else h2
        w2 = (w + 1) // 2 if w2 is None else w2
        x = F.pad(x, (0, 0, 0, 2 * w2 - w, 0, 2 * h2 - h))
        # (N, h2, 2 rows, w2, 2 cols, C) -> channels [row 0 col 0, row 1 col 0, row 0 col 1, row 1 col 1] (the
        # official x0, x1, x2, x3), by a reshape instead of strided slices (simpler symbolic shapes in export).
        x = x.view(n, h2, 2, w2, 2, c).permute(0, 1, 3, 4, 2, 5).reshape(n, h2, w2, 4 * c)
        return self.reduction(self.norm(x))


class SwinStage(nn.Module):
    """`layers.{i}`: `depth` blocks alternating plain and shifted windows, then (except the last) patch merging."""

    def __init__(self, dim: int, depth: int, num_heads: int, window_size: int, mlp_ratio: float, qkv_bias: bool,
                 drop_path: list[float], downsample: bool) -> None:
        super().__init__()
        self.window_size, self.shift_size = window_size, window_size // 2
        self.blocks = nn.ModuleList(
            SwinTransformerBlock(dim, num_heads, window_size, 0 if i % 2 == 0 else window_size // 2, mlp_ratio,
                                 qkv_bias, drop_path[i])
            for i in range(depth))
        self.downsample = PatchMerging(dim) if downsample else None

    def forward(self, x: torch.Tensor, nh: int | None = None, nw: int | None = None) -> torch.Tensor:
        """x (N, H, W, C) -> the stage output before merging (N, H, W, C); nh, nw: window counts (optional)."""
        ws = self.window_size
        nh = (x.shape[1] + ws - 1) // ws if nh is None else nh
        nw = (x.shape[2] + ws - 1) // ws if nw is None else nw
        mask = shifted_window_mask(nh * ws, nw * ws, ws, self.shift_size, x.device)
        for block in self.blocks:
            x = block(x, mask, nh, nw)
        return x


class PatchEmbed(nn.Module):
    """images (N, 3, H, W) -> (N, C, ceil(H/p), ceil(W/p)): right/bottom zero-pad to p, conv p/p, LayerNorm."""

    def __init__(self, patch_size: int, embed_dim: int, norm: bool) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(3, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.norm = LayerNorm(embed_dim) if norm else None

    def forward(self, x: torch.Tensor, hq: int | None = None, wq: int | None = None) -> torch.Tensor:
        """hq, wq: the token grid ceil(H/p), ceil(W/p), when the caller has it."""
        p = self.patch_size
        h, w = x.shape[-2:]
        hq = (h + p - 1) // p if hq is None else hq
        wq = (w + p - 1) // p if wq is None else wq
        x = self.proj(F.pad(x, (0, wq * p - w, 0, hq * p - h)))
        if self.norm is not None:
            x = self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return x


class SwinTransformer(nn.Module):
    """images (N, 3, H, W) -> {"res2": (N, C, H/4, W/4), ..., "res5": (N, 8C, H/32, W/32)} (sizes rounded up)."""

    def __init__(self, cfg: SwinConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.patch_embed = PatchEmbed(cfg.patch_size, cfg.embed_dim, cfg.patch_norm)
        if cfg.ape:
            side = cfg.pretrain_img_size // cfg.patch_size
            self.absolute_pos_embed = nn.Parameter(torch.zeros(1, cfg.embed_dim, side, side))
            nn.init.trunc_normal_(self.absolute_pos_embed, std=0.02)
        total = sum(cfg.depths)  # stochastic depth rising linearly 0 -> drop_path_rate over all blocks
        dpr = [cfg.drop_path_rate * i / max(total - 1, 1) for i in range(total)]
        self.layers = nn.ModuleList()
        for i, (depth, heads) in enumerate(zip(cfg.depths, cfg.num_heads)):
            start = sum(cfg.depths[:i])
            self.layers.append(SwinStage(cfg.embed_dim * 2**i, depth, heads, cfg.window_size, cfg.mlp_ratio,
                                         cfg.qkv_bias, dpr[start:start + depth], downsample=i < 3))
        for i in range(4):
            self.add_module(f"norm{i}", LayerNorm(cfg.embed_dim * 2**i))
        self.out_channels = cfg.out_channels
        self.apply(_init_weights)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        # Stage sizes straight from the image size: ceil(ceil(H/4)/2) = ceil(H/8) and so on. Written this way
        # the exporter sees (H + 7)//8 rather than nested floor divisions, which keeps torch.export fast.
        h, w = x.shape[-2:]
        p = self.cfg.patch_size
        sizes = [((h + p * 2**i - 1) // (p * 2**i), (w + p * 2**i - 1) // (p * 2**i)) for i in range(4)]
        ws = self.cfg.window_size * p  # window counts likewise: ceil(ceil(H/4/2^i)/ws) = ceil(H/(4*2^i*ws))
        windows = [((h + ws * 2**i - 1) // (ws * 2**i), (w + ws * 2**i - 1) // (ws * 2**i)) for i in range(4)]
        x = self.patch_embed(x, *sizes[0])
        if self.cfg.ape:
            x = x + F.interpolate(self.absolute_pos_embed, size=x.shape[-2:], mode="bicubic")
        x = x.permute(0, 2, 3, 1)  # (N, H/4, W/4, C)
        outputs = {}
        for i, stage in enumerate(self.layers):
            x = stage(x, *windows[i])
            outputs[f"res{i + 2}"] = getattr(self, f"norm{i}")(x).permute(0, 3, 1, 2).contiguous()
            if stage.downsample is not None:
                x = stage.downsample(x, *sizes[i + 1])
        return outputs


def _init_weights(m: nn.Module) -> None:
    """Swin's init (random weights only; checkpoints overwrite it): trunc-normal(0.02) linears, zero biases."""
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)
