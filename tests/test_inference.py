"""Whole-video inference: top-k semantics, RLE per frame, chunking invariance, pre-processing, the CLI."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils

from vita_deploy.config import get_config
from vita_deploy.pipeline.inference import eager_graphs, encode_masks, run_video, select_topk
from vita_deploy.modeling.model import build_model
from vita_deploy.pipeline.preprocess import frames_to_tensor, normalize_and_pad, resize_frame, shortest_edge_size


def test_topk_one_query_may_win_several_classes():
    logits = torch.full((4, 4), -10.0)  # 4 queries, 3 classes + no-object
    logits[2, 0] = logits[2, 1] = 5.0  # query 2 is confident in classes 0 and 1
    logits[0, 2] = 3.0
    scores, labels, queries = select_topk(logits, 3)
    pairs = {(int(q), int(c)) for q, c in zip(queries, labels)}
    assert pairs == {(2, 0), (2, 1), (0, 2)}
    probs = logits.softmax(-1)
    for s, q, c in zip(scores, queries, labels):
        assert s.item() == pytest.approx(probs[q, c].item())


def test_encode_masks_keeps_empty_frames():
    masks = np.zeros((3, 5, 7), dtype=bool)
    masks[1, 1:3, 2:6] = True
    rles = encode_masks(masks)
    assert len(rles) == 3 and all(isinstance(r["counts"], str) for r in rles)
    assert [int(mask_utils.area(r)) for r in rles] == [0, 8, 0]
    np.testing.assert_array_equal(mask_utils.decode(rles[1]).astype(bool), masks[1])


def test_shortest_edge_and_padding():
    assert shortest_edge_size(720, 1280, 360, 1333) == (360, 640)
    assert shortest_edge_size(1280, 720, 360, 1333) == (640, 360)
    assert shortest_edge_size(100, 1000, 360, 1333) == (133, 1333)  # long side capped
    x = normalize_and_pad(torch.full((1, 3, 100, 70), 255, dtype=torch.uint8), get_config("r50").input)
    assert x.shape == (1, 3, 128, 96)
    assert (x[..., 100:, :] == 0).all() and (x[..., :, 70:] == 0).all()
    assert x[0, 0, 0, 0].item() == pytest.approx((255 - 123.675) / 58.395)


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return build_model(get_config("tiny")).eval()


def _frames(t, h=90, w=150, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 255, (h, w, 3), dtype=np.uint8) for _ in range(t)]


def test_run_video_outputs_and_chunk_invariance(tiny):
    frames = _frames(9)
    det, vita = eager_graphs(tiny)
    a = run_video(frames, det, vita, tiny.cfg)
    cfg_small_chunks = tiny.cfg.__class__(**{**tiny.cfg.__dict__, "inference": tiny.cfg.inference.__class__(
        chunk_size=2, interpolate_chunk_size=3, topk=10)})
    b = run_video(iter(frames), det, vita, cfg_small_chunks)
    assert len(a.scores) == 10 and a.num_frames == 9 and (a.height, a.width) == (90, 150)
    assert all(len(s) == 9 for s in a.segmentations)
    assert all(r["size"] == [90, 150] for s in a.segmentations for r in s)
    assert a.labels == b.labels
    np.testing.assert_allclose(a.scores, b.scores, rtol=1e-4)
    for sa, sb in zip(a.segmentations, b.segmentations):
        ious = mask_utils.iou(sa, sb, [0] * len(sb)).diagonal()
        areas = mask_utils.area(sa)
        assert all(iou > 0.999 or area == 0 for iou, area in zip(ious, areas))
    results = a.to_ytvis(video_id=7)
    assert results[0]["video_id"] == 7 and results[0]["category_id"] == a.labels[0] + 1


def test_mask_score_scales_class_probability(tiny):
    """final score = class prob x mean sigmoid inside the hard mask, which is in (0.5, 1] or 0."""
    frames = _frames(3)
    det, vita = eager_graphs(tiny)
    pred = run_video(frames, det, vita, tiny.cfg)
    size = shortest_edge_size(90, 150, tiny.cfg.input.min_size_test, tiny.cfg.input.max_size_test)
    images = normalize_and_pad(frames_to_tensor([resize_frame(f, size) for f in frames]), tiny.cfg.input)
    probs, _, _ = select_topk(vita(det(images)[0])[0], tiny.cfg.inference.topk)
    assert len(pred.scores) == len(probs)
    for score, prob in zip(pred.scores, probs.tolist()):
        assert score <= prob * (1 + 1e-5) and (score == 0 or score > 0.5 * prob * (1 - 1e-5))


def test_infer_cli_on_frame_folder_and_mp4(tmp_path, tiny):
    frames = _frames(4, 64, 96)
    folder = tmp_path / "frames"
    folder.mkdir()
    for i, f in enumerate(frames):
        cv2.imwrite(str(folder / f"{i:05d}.jpg"), cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
    mp4 = tmp_path / "clip.mp4"
    writer = cv2.VideoWriter(str(mp4), cv2.VideoWriter_fourcc(*"mp4v"), 10, (96, 64))
    for f in frames:
        writer.write(cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
    writer.release()
    from vita_deploy.commands import infer
    for src in (folder, mp4):
        out = tmp_path / f"{src.stem}.json"
        assert infer.main([str(src), "--config", "tiny", "--json", str(out), "--device", "cpu"]) == 0
        results = json.loads(out.read_text())
        assert len(results) == 10 and all(len(r["segmentations"]) == 4 for r in results)


def test_infer_cli_clear_errors(tmp_path, capsys):
    from vita_deploy.commands import infer
    assert infer.main([str(tmp_path / "missing.mp4"), "--config", "tiny"]) == 2
    assert "does not exist" in capsys.readouterr().err
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video at all")
    assert infer.main([str(bad), "--config", "tiny"]) == 2
    assert "cannot decode" in capsys.readouterr().err
    # amp does not apply to an export's graphs
    assert infer.main([str(bad), "--backend", "onnxruntime", "--export", str(tmp_path), "--amp"]) == 2
    assert "--amp is fp16 autocast" in capsys.readouterr().err


def test_amp_off_cuda_is_refused_not_run_in_fp32(tmp_path, tiny, capsys):
    with pytest.raises(ValueError, match="CUDA only"):
        eager_graphs(tiny, amp=True)[0](torch.zeros(1, 3, 64, 64))
    from vita_deploy.commands import infer
    folder = tmp_path / "frames"
    folder.mkdir()
    cv2.imwrite(str(folder / "00000.png"), np.zeros((64, 96, 3), np.uint8))
    assert infer.main([str(folder), "--config", "tiny", "--device", "cpu", "--amp",
                       "--json", str(tmp_path / "r.json")]) == 2
    assert "CUDA only" in capsys.readouterr().err and not (tmp_path / "r.json").exists()


@pytest.mark.parametrize("host_mb,dtype", [(None, torch.float32), (0.0, torch.float32), (0.05, torch.float16)])
def test_feature_store_tiers_round_trip(host_mb, dtype, tmp_path):
    from vita_deploy.pipeline.feature_store import FeatureStore
    x = torch.randn(150, 4, 5, 6)
    with FeatureStore("cpu", 0, host_mb, tmp_path, dtype) as store:
        for i in range(0, 150, 7):
            store.append(x[i:i + 7])
        assert store.num_frames == 150
        assert store.bytes_host + store.bytes_disk == 150 * 4 * 5 * 6 * (4 if dtype == torch.float32 else 2)
        if host_mb == 0.0:
            assert store.bytes_host == 0 and len(list(tmp_path.iterdir())) == 1
        y = torch.cat([store.get(i, min(i + 5, 150)) for i in range(0, 150, 5)])
    torch.testing.assert_close(y, x, rtol=0, atol=0 if dtype == torch.float32 else 5e-3)
    assert not list(tmp_path.iterdir())  # the spill file is removed


def test_run_video_spilling_to_disk_gives_same_result(tiny, tmp_path):
    frames = _frames(7)
    det, vita = eager_graphs(tiny)
    a = run_video(frames, det, vita, tiny.cfg)
    b = run_video(frames, det, vita, tiny.cfg, host_budget_mb=0.0, spill_dir=str(tmp_path))
    assert a.scores == b.scores and a.labels == b.labels and a.segmentations == b.segmentations
    assert {"decode", "preprocess", "detector", "vita", "postprocess"} <= set(a.timings)


def test_keep_mode_shows_the_vita_and_mask_stage(tiny, capsys):
    """After the detector bar, keep mode's VITA + post-processing has a bar of its own (no silent seconds)."""
    det, vita = eager_graphs(tiny)
    pred = run_video(_frames(5), det, vita, tiny.cfg, features="keep", progress=True, num_frames=5)
    err = capsys.readouterr().err
    assert pred.features_mode == "keep"
    assert err.index("frame detector") < err.index("VITA + masks") and "5/5" in err.split("VITA + masks")[-1]
