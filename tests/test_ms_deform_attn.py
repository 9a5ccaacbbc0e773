"""`ms_deform_attn` (grid_sample) against an independent slow reference that loops over levels and points."""
from __future__ import annotations

import pytest
import torch

from references import deform_attn_loop as slow_reference
from vita_deploy.modeling.ms_deform_attn import (MSDeformAttn, deform_attn_implementation, ms_deform_attn,
                                                ms_deform_attn_gather, ms_deform_attn_plugin)


@pytest.mark.parametrize("seed", [0, 1])
def test_matches_slow_reference_including_outside_samples(seed):
    g = torch.Generator().manual_seed(seed)
    shapes = [(5, 7), (3, 4), (2, 2)]
    n, m, d, lq, p = 2, 2, 4, 6, 3
    s = sum(h * w for h, w in shapes)
    value = torch.randn(n, s, m, d, generator=g)
    # Locations in [-0.3, 1.3]: a good share falls outside the map or straddles its border.
    locations = torch.rand(n, lq, m, len(shapes), p, 2, generator=g) * 1.6 - 0.3
    weights = torch.rand(n, lq, m, len(shapes), p, generator=g)
    weights = weights / weights.sum((-1, -2), keepdim=True)
    spatial_shapes = torch.tensor(shapes, dtype=torch.int32)
    level_start_index = torch.tensor([0, 35, 47], dtype=torch.int32)
    outside = ((locations < 0) | (locations > 1)).any(-1).float().mean().item()
    assert outside > 0.2
    out = ms_deform_attn(value, spatial_shapes, level_start_index, locations, weights)
    assert out.shape == (n, lq, m, d)
    ref = slow_reference(value, shapes, locations, weights)
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)


def test_rejects_inconsistent_shapes():
    value = torch.randn(1, 10, 2, 4)
    with pytest.raises(ValueError, match="spatial_shapes"):
        ms_deform_attn(value, torch.tensor([[3, 3]]), torch.tensor([0]), torch.rand(1, 2, 2, 1, 2, 2),
                       torch.rand(1, 2, 2, 1, 2))


def test_module_at_pixel_centres_is_identity_sampling():
    """With zero offsets and all weight on level 0, the module samples exactly the reference pixel."""
    attn = MSDeformAttn(d_model=8, n_levels=1, n_heads=2, n_points=1)
    torch.nn.init.zeros_(attn.sampling_offsets.bias)
    with torch.no_grad():
        attn.value_proj.weight.copy_(torch.eye(8))
        attn.output_proj.weight.copy_(torch.eye(8))
    h, w = 3, 4
    src = torch.randn(1, h * w, 8)
    ys, xs = torch.meshgrid((torch.arange(h) + 0.5) / h, (torch.arange(w) + 0.5) / w, indexing="ij")
    ref = torch.stack([xs.flatten(), ys.flatten()], -1)[None, :, None]  # (1, S, 1, 2)
    out = attn(src, ref, src, [(h, w)])
    torch.testing.assert_close(out, src, rtol=1e-5, atol=1e-5)


def test_gather_and_plugin_forms_equal_the_reference():
    g = torch.Generator().manual_seed(3)
    shapes = [(6, 9), (3, 5), (2, 3)]
    s = sum(h * w for h, w in shapes)
    value = torch.randn(2, s, 4, 8, generator=g)
    locations = torch.rand(2, 11, 4, 3, 4, 2, generator=g) * 1.4 - 0.2
    weights = torch.rand(2, 11, 4, 3, 4, generator=g)
    ref = ms_deform_attn(value, torch.tensor(shapes), None, locations, weights)
    torch.testing.assert_close(ms_deform_attn_gather(value, shapes, locations, weights), ref, rtol=1e-5, atol=1e-6)
    starts = torch.tensor([0, 54, 69], dtype=torch.int32)
    torch.testing.assert_close(ms_deform_attn_plugin(value, torch.tensor(shapes, dtype=torch.int32), starts,
                                                     locations, weights), ref)


def test_module_gives_the_same_result_with_every_implementation():
    attn = MSDeformAttn(d_model=16, n_levels=2, n_heads=2, n_points=3)
    torch.nn.init.normal_(attn.sampling_offsets.weight, std=0.5)
    shapes = [(5, 6), (3, 3)]
    src = torch.randn(2, 39, 16)
    ref_points = torch.rand(2, 39, 2, 2)
    outs = {}
    for name in ("reference", "native", "plugin"):
        with deform_attn_implementation(name):
            outs[name] = attn(src, ref_points, src, shapes)
    torch.testing.assert_close(outs["native"], outs["reference"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(outs["plugin"], outs["reference"], rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="implementation"):
        with deform_attn_implementation("grid"):
            pass
