"""Expected parameter names and shapes of an official VITA R-50 YouTube-VIS 2019 checkpoint.

Written from the official code (detectron2 ResNet, Mask2Former MSDeformAttnPixelDecoder, VITA's
Mask2Former decoder and `vita.py`), independently of vita_deploy's modules, so that the importer is tested
against the official naming rather than against itself.
"""
from __future__ import annotations

C, FFN_DEC, FFN_PIX, HEADS, LEVELS, POINTS = 256, 2048, 1024, 8, 3, 4
NUM_CLASSES, FQ, CQ = 40, 100, 100


def _frozen_bn(prefix: str, ch: int) -> dict[str, tuple[int, ...]]:
    return {f"{prefix}.norm.{n}": (ch,) for n in ("weight", "bias", "running_mean", "running_var")}


def _conv(prefix: str, cin: int, cout: int, k: int) -> dict[str, tuple[int, ...]]:
    return {f"{prefix}.weight": (cout, cin, k, k), **_frozen_bn(prefix, cout)}


def _linear(prefix: str, cin: int, cout: int) -> dict[str, tuple[int, ...]]:
    return {f"{prefix}.weight": (cout, cin), f"{prefix}.bias": (cout,)}


def _ln(prefix: str) -> dict[str, tuple[int, ...]]:
    return {f"{prefix}.weight": (C,), f"{prefix}.bias": (C,)}


def _mha(prefix: str) -> dict[str, tuple[int, ...]]:
    return {f"{prefix}.in_proj_weight": (3 * C, C), f"{prefix}.in_proj_bias": (3 * C,),
            **_linear(f"{prefix}.out_proj", C, C)}


def _decoder_layers(prefix: str, n: int, ffn: int) -> dict[str, tuple[int, ...]]:
    keys: dict[str, tuple[int, ...]] = {}
    for i in range(n):
        keys.update(_mha(f"{prefix}transformer_self_attention_layers.{i}.self_attn"))
        keys.update(_ln(f"{prefix}transformer_self_attention_layers.{i}.norm"))
        keys.update(_mha(f"{prefix}transformer_cross_attention_layers.{i}.multihead_attn"))
        keys.update(_ln(f"{prefix}transformer_cross_attention_layers.{i}.norm"))
        keys.update(_linear(f"{prefix}transformer_ffn_layers.{i}.linear1", C, ffn))
        keys.update(_linear(f"{prefix}transformer_ffn_layers.{i}.linear2", ffn, C))
        keys.update(_ln(f"{prefix}transformer_ffn_layers.{i}.norm"))
    return keys


def _mlp(prefix: str) -> dict[str, tuple[int, ...]]:
    keys: dict[str, tuple[int, ...]] = {}
    for i in range(3):
        keys.update(_linear(f"{prefix}.layers.{i}", C, C))
    return keys


def official_r50_keys() -> dict[str, tuple[int, ...]]:
    keys: dict[str, tuple[int, ...]] = {}
    # detectron2 ResNet-50: stem + res2..res5 with (3, 4, 6, 3) bottleneck blocks.
    keys.update(_conv("backbone.stem.conv1", 3, 64, 7))
    cin = 64
    for stage, (blocks, cout) in enumerate(zip((3, 4, 6, 3), (256, 512, 1024, 2048))):
        mid = cout // 4
        for b in range(blocks):
            p = f"backbone.res{stage + 2}.{b}"
            if b == 0:
                keys.update(_conv(f"{p}.shortcut", cin, cout, 1))
            keys.update(_conv(f"{p}.conv1", cin if b == 0 else cout, mid, 1))
            keys.update(_conv(f"{p}.conv2", mid, mid, 3))
            keys.update(_conv(f"{p}.conv3", mid, cout, 1))
        cin = cout
    # Pixel decoder.
    pd = "sem_seg_head.pixel_decoder"
    for i, ch in enumerate((2048, 1024, 512)):
        keys[f"{pd}.input_proj.{i}.0.weight"] = (C, ch, 1, 1)
        keys[f"{pd}.input_proj.{i}.0.bias"] = (C,)
        keys[f"{pd}.input_proj.{i}.1.weight"] = (C,)
        keys[f"{pd}.input_proj.{i}.1.bias"] = (C,)
    keys[f"{pd}.transformer.level_embed"] = (LEVELS, C)
    for i in range(6):
        p = f"{pd}.transformer.encoder.layers.{i}"
        keys.update(_linear(f"{p}.self_attn.sampling_offsets", C, HEADS * LEVELS * POINTS * 2))
        keys.update(_linear(f"{p}.self_attn.attention_weights", C, HEADS * LEVELS * POINTS))
        keys.update(_linear(f"{p}.self_attn.value_proj", C, C))
        keys.update(_linear(f"{p}.self_attn.output_proj", C, C))
        keys.update(_ln(f"{p}.norm1"))
        keys.update(_linear(f"{p}.linear1", C, FFN_PIX))
        keys.update(_linear(f"{p}.linear2", FFN_PIX, C))
        keys.update(_ln(f"{p}.norm2"))
    keys[f"{pd}.mask_features.weight"] = (C, C, 1, 1)
    keys[f"{pd}.mask_features.bias"] = (C,)
    keys[f"{pd}.adapter_1.weight"] = (C, 256, 1, 1)
    keys[f"{pd}.adapter_1.norm.weight"] = (C,)
    keys[f"{pd}.adapter_1.norm.bias"] = (C,)
    keys[f"{pd}.layer_1.weight"] = (C, C, 3, 3)
    keys[f"{pd}.layer_1.norm.weight"] = (C,)
    keys[f"{pd}.layer_1.norm.bias"] = (C,)
    # Frame decoder (9 layers; input_proj is an empty Sequential because 256 == 256).
    pr = "sem_seg_head.predictor."
    keys.update(_decoder_layers(pr, 9, FFN_DEC))
    keys.update(_ln(f"{pr}decoder_norm"))
    keys[f"{pr}query_feat.weight"] = (FQ, C)
    keys[f"{pr}query_embed.weight"] = (FQ, C)
    keys[f"{pr}level_embed.weight"] = (LEVELS, C)
    keys.update(_linear(f"{pr}class_embed", C, NUM_CLASSES + 1))
    keys.update(_mlp(f"{pr}mask_embed"))
    # VITA module.
    vm = "vita_module."
    for i in range(6):
        keys.update(_mha(f"{vm}enc_self_attn.{i}.self_attn"))
        keys.update(_ln(f"{vm}enc_self_attn.{i}.norm"))
        keys.update(_linear(f"{vm}enc_ffn.{i}.linear1", C, FFN_DEC))
        keys.update(_linear(f"{vm}enc_ffn.{i}.linear2", FFN_DEC, C))
        keys.update(_ln(f"{vm}enc_ffn.{i}.norm"))
    keys.update(_decoder_layers(vm, 3, FFN_DEC))
    keys[f"{vm}vita_mask_features.weight"] = (C, C, 1, 1)
    keys[f"{vm}vita_mask_features.bias"] = (C,)
    keys.update(_ln(f"{vm}decoder_norm"))
    keys[f"{vm}query_feat.weight"] = (CQ, C)
    keys[f"{vm}query_embed.weight"] = (CQ, C)
    keys[f"{vm}fq_pos.weight"] = (FQ, C)
    keys.update(_linear(f"{vm}input_proj_dec", C, C))
    keys.update(_linear(f"{vm}class_embed", C, NUM_CLASSES + 1))
    keys.update(_mlp(f"{vm}mask_embed"))
    keys.update(_linear(f"{vm}sim_embed_frame", C, C))
    keys.update(_linear(f"{vm}sim_embed_clip", C, C))
    return keys
