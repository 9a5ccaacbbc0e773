"""Expected parameter names and shapes of official VITA R-101 and Swin-L checkpoints (any dataset).

Written from the official code, independently of vita_deploy's modules: detectron2's ResNet with
RESNETS.DEPTH 101 (blocks 3/4/23/3) and Mask2Former's `D2SwinTransformer` (`mask2former/modeling/backbone/
swin.py`: PatchEmbed `proj` + `norm`, BasicLayer `blocks.{j}` of SwinTransformerBlock `norm1`, `attn`
(WindowAttention: `relative_position_bias_table` ((2ws-1)^2, heads), buffer `relative_position_index`
(ws^2, ws^2), `qkv`, `proj`), `norm2`, `mlp.fc1`/`fc2`; PatchMerging `downsample.reduction` (no bias) and
`downsample.norm` on 4C; one LayerNorm `norm{i}` per output, APE off). The heads are the R-50 file's, with the
pixel decoder's inputs at the backbone's channels and the frame-query count of the config (Swin: 200).
"""
from __future__ import annotations

from official_r50_keys import official_r50_keys

SWIN_L = {"embed_dim": 192, "depths": (2, 2, 18, 2), "num_heads": (6, 12, 24, 48), "window_size": 12}


def swin_backbone_keys(embed_dim: int, depths: tuple[int, ...], num_heads: tuple[int, ...], window_size: int,
                       patch_size: int = 4, mlp_ratio: float = 4.0) -> dict[str, tuple[int, ...]]:
    keys: dict[str, tuple[int, ...]] = {
        "backbone.patch_embed.proj.weight": (embed_dim, 3, patch_size, patch_size),
        "backbone.patch_embed.proj.bias": (embed_dim,),
        "backbone.patch_embed.norm.weight": (embed_dim,),
        "backbone.patch_embed.norm.bias": (embed_dim,),
    }
    for i, (depth, heads) in enumerate(zip(depths, num_heads)):
        dim = embed_dim * 2**i
        hidden = int(dim * mlp_ratio)
        for j in range(depth):
            b = f"backbone.layers.{i}.blocks.{j}"
            keys[f"{b}.norm1.weight"] = keys[f"{b}.norm1.bias"] = (dim,)
            keys[f"{b}.attn.relative_position_bias_table"] = ((2 * window_size - 1) ** 2, heads)
            keys[f"{b}.attn.relative_position_index"] = (window_size**2, window_size**2)
            keys[f"{b}.attn.qkv.weight"], keys[f"{b}.attn.qkv.bias"] = (3 * dim, dim), (3 * dim,)
            keys[f"{b}.attn.proj.weight"], keys[f"{b}.attn.proj.bias"] = (dim, dim), (dim,)
            keys[f"{b}.norm2.weight"] = keys[f"{b}.norm2.bias"] = (dim,)
            keys[f"{b}.mlp.fc1.weight"], keys[f"{b}.mlp.fc1.bias"] = (hidden, dim), (hidden,)
            keys[f"{b}.mlp.fc2.weight"], keys[f"{b}.mlp.fc2.bias"] = (dim, hidden), (dim,)
        if i < len(depths) - 1:
            keys[f"backbone.layers.{i}.downsample.reduction.weight"] = (2 * dim, 4 * dim)
            keys[f"backbone.layers.{i}.downsample.norm.weight"] = (4 * dim,)
            keys[f"backbone.layers.{i}.downsample.norm.bias"] = (4 * dim,)
        keys[f"backbone.norm{i}.weight"] = keys[f"backbone.norm{i}.bias"] = (dim,)
    return keys


def resnet_backbone_keys(blocks: tuple[int, int, int, int]) -> dict[str, tuple[int, ...]]:
    keys: dict[str, tuple[int, ...]] = {}

    def conv(prefix: str, cin: int, cout: int, k: int) -> None:
        keys[f"{prefix}.weight"] = (cout, cin, k, k)
        for n in ("weight", "bias", "running_mean", "running_var"):
            keys[f"{prefix}.norm.{n}"] = (cout,)

    conv("backbone.stem.conv1", 3, 64, 7)
    cin = 64
    for stage, (n, cout) in enumerate(zip(blocks, (256, 512, 1024, 2048))):
        for b in range(n):
            p = f"backbone.res{stage + 2}.{b}"
            if b == 0:
                conv(f"{p}.shortcut", cin, cout, 1)
            conv(f"{p}.conv1", cin if b == 0 else cout, cout // 4, 1)
            conv(f"{p}.conv2", cout // 4, cout // 4, 3)
            conv(f"{p}.conv3", cout // 4, cout, 1)
        cin = cout
    return keys


def official_keys(backbone: str, num_classes: int) -> dict[str, tuple[int, ...]]:
    """backbone 'r50' | 'r101' | 'swinl' -> every key of the official model_final.pth and its shape."""
    heads = {k: v for k, v in official_r50_keys().items() if not k.startswith("backbone.")}
    if backbone == "swinl":
        bb = swin_backbone_keys(**SWIN_L)
        channels, fq = (192, 384, 768, 1536), 200
    else:
        bb = resnet_backbone_keys((3, 4, 23, 3) if backbone == "r101" else (3, 4, 6, 3))
        channels, fq = (256, 512, 1024, 2048), 100
    pd = "sem_seg_head.pixel_decoder"
    for i, ch in enumerate(reversed(channels[1:])):  # input_proj.0 takes res5
        heads[f"{pd}.input_proj.{i}.0.weight"] = (256, ch, 1, 1)
    heads[f"{pd}.adapter_1.weight"] = (256, channels[0], 1, 1)
    for k in ("sem_seg_head.predictor.query_feat.weight", "sem_seg_head.predictor.query_embed.weight",
              "vita_module.fq_pos.weight"):
        heads[k] = (fq, 256)
    for p in ("sem_seg_head.predictor.class_embed", "vita_module.class_embed"):
        heads[f"{p}.weight"], heads[f"{p}.bias"] = (num_classes + 1, 256), (num_classes + 1,)
    return {**bb, **heads}
