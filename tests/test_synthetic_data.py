"""Synthetic YouTube-VIS generator, the JSON loader's errors, and training clips."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils

from vita_deploy.data.dataset import ClipAugmentation, YTVISClipDataset, sample_frame_indices
from vita_deploy.data.synthetic import generate_split, make_video, uncompressed_rle
from vita_deploy.data.ytvis_json import YTVISFormatError, load_ytvis_json, segmentation_to_rle


@pytest.fixture(scope="module")
def split(tmp_path_factory):
    out = tmp_path_factory.mktemp("syn")
    return generate_split(out, "train", 12, seed=3, progress=False)


def test_layout_and_annotations(split):
    data = load_ytvis_json(split)
    root = split.parent / "train" / "JPEGImages"
    assert len(data["videos"]) == 12 and {c["name"] for c in data["categories"]} >= {"circle", "square"}
    for v in data["videos"]:
        assert 6 <= v["length"] <= 36 and len(v["file_names"]) == v["length"]
        assert (root / v["file_names"][0]).is_file()
    for a in data["annotations"]:
        video = next(v for v in data["videos"] if v["id"] == a["video_id"])
        for segm, area, bbox in zip(a["segmentations"], a["areas"], a["bboxes"]):
            assert (segm is None) == (area is None) == (bbox is None)
            if segm is not None:
                assert isinstance(segm["counts"], list)  # uncompressed, like the real train.json
                rle = segmentation_to_rle(segm, video["height"], video["width"])
                assert int(mask_utils.area(rle)) == area > 0


def test_deterministic_for_a_seed(tmp_path, split):
    again = generate_split(tmp_path, "train", 12, seed=3, progress=False)
    assert again.read_bytes() == split.read_bytes()
    first = json.loads(split.read_text())["videos"][0]["file_names"][0]
    assert (tmp_path / "train" / "JPEGImages" / first).read_bytes() == \
        (split.parent / "train" / "JPEGImages" / first).read_bytes()


def test_occlusion_late_entry_and_early_exit():
    rng = np.random.default_rng(0)
    videos = [make_video(rng) for _ in range(30)]
    # Visible masks of different instances never overlap (occluded parts belong to the top instance).
    for v in videos:
        assert (v.masks.sum(0) <= 1).all()
    # Some instances are absent in some frames (entered late, left early or fully occluded).
    assert any((~v.present).any() for v in videos)
    assert any(v.present[i].any() and not v.present[i, 0] for v in videos for i in range(len(v.labels)))
    assert any(v.present[i].any() and not v.present[i, -1] for v in videos for i in range(len(v.labels)))


def test_uncompressed_rle_round_trip():
    m = np.zeros((7, 5), bool)
    m[0, 0] = m[2:5, 1:4] = True
    rle = uncompressed_rle(m)
    assert sum(rle["counts"]) == 35
    np.testing.assert_array_equal(mask_utils.decode(mask_utils.frPyObjects(rle, 7, 5)).astype(bool), m)


@pytest.mark.parametrize("mutate,field", [
    (lambda d: d.pop("videos"), "videos"),
    (lambda d: d["annotations"][0].pop("category_id"), "category_id"),
    (lambda d: d["annotations"][0].update(video_id=999), "video_id"),
    (lambda d: d["annotations"][0]["segmentations"].pop(), "segmentations"),
    (lambda d: d["videos"][0].update(length=99), "length"),
])
def test_malformed_json_is_named(split, tmp_path, mutate, field):
    data = json.loads(split.read_text())
    mutate(data)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(data))
    with pytest.raises(YTVISFormatError, match=field):
        load_ytvis_json(bad)


def test_truncated_and_val_files(split, tmp_path):
    bad = tmp_path / "trunc.json"
    bad.write_text(split.read_text()[:100])
    with pytest.raises(YTVISFormatError, match="not valid JSON"):
        load_ytvis_json(bad)
    data = json.loads(split.read_text())
    data["annotations"] = None  # val/test layout
    assert load_ytvis_json(data)["annotations"] == []


def test_polygon_and_compressed_segmentations_decode_alike():
    poly = [[2.0, 2.0, 8.0, 2.0, 8.0, 6.0, 2.0, 6.0]]
    rle_poly = segmentation_to_rle(poly, 10, 12)
    compressed = dict(rle_poly)
    compressed["counts"] = compressed["counts"].decode()
    m = mask_utils.decode(rle_poly)
    np.testing.assert_array_equal(mask_utils.decode(segmentation_to_rle(compressed, 10, 12)), m)
    np.testing.assert_array_equal(
        mask_utils.decode(segmentation_to_rle(uncompressed_rle(m.astype(bool)), 10, 12)), m)


def test_frame_sampling_follows_the_official_rule():
    rng = np.random.default_rng(0)
    for _ in range(200):
        idx = sample_frame_indices(rng, 30, 5, 4)
        assert len(idx) == 5 and (np.diff(idx) >= 0).all()
        assert idx.max() - idx.min() <= 8 and 0 <= idx.min() and idx.max() < 30
    assert (sample_frame_indices(rng, 1, 3, 4) == 0).all()  # one-frame video: replacement


def test_clips_are_consistent(split):
    ds = YTVISClipDataset(split, split.parent / "train" / "JPEGImages", num_frames=3, sampling_frame_range=5,
                          augment=ClipAugmentation(), seed=1)
    for i in range(6):
        clip = ds[i]
        t, _, h, w = clip["images"].shape
        assert t == 3 and clip["masks"].shape[1:] == (3, h, w)
        assert torch.equal(clip["valid"], clip["masks"].flatten(2).any(-1))
        assert clip["valid"].any(1).all()  # only instances present in a sampled frame
        assert len(clip["labels"]) == len(clip["ids"]) == clip["masks"].shape[0]
    a, b = ds[4], ds[4]
    assert torch.equal(a["images"], b["images"])  # item i is reproducible


def test_augmentation_keeps_masks_aligned():
    aug = ClipAugmentation(flip_prob=1.0, crop_prob=0.0, min_sizes=(20,), max_size=100)
    image = np.zeros((10, 20, 3), np.uint8)
    mask = np.zeros((10, 20), bool)
    image[2:5, 1:6] = 255
    mask[2:5, 1:6] = True
    params = aug.sample(np.random.default_rng(0), 10, 20)
    out_img, out_mask = aug.apply(image, params), aug.apply(mask, params, is_mask=True)
    assert out_img.shape[:2] == out_mask.shape == (20, 40)
    assert out_mask[:, -10:].any() and not out_mask[:, :20].any()  # flipped to the right
    np.testing.assert_array_equal(out_img[..., 0] > 127, out_mask)


def test_crop_origin_pans_across_the_clip_as_the_official_random_crop_clip():
    # identity resizes (100x120 -> short side 100, crop 50x50 -> short side 50) so pixel values give the origin
    aug = ClipAugmentation(flip_prob=0.0, crop_prob=1.0, crop_resize_sizes=(100,), crop_range=(50, 50),
                           min_sizes=(50,), max_size=50)
    rows, cols = np.meshgrid(np.arange(100), np.arange(120), indexing="ij")
    image = np.stack([rows, cols, np.zeros_like(rows)], -1).astype(np.uint8)
    mask = (rows % 7 == 0) & (cols % 5 == 0)
    moved = 0
    for seed in range(50):
        params = aug.sample(np.random.default_rng(seed), 100, 120, num_frames=5)
        _, (ys, xs, ch, cw) = params["crop"]
        assert (ch, cw) == (50, 50) and len(ys) == len(xs) == 5
        for d in (np.diff(ys), np.diff(xs)):
            assert (d >= 0).all() or (d <= 0).all()  # one straight pan, forwards or backwards
        moved += ys[0] != ys[-1] or xs[0] != xs[-1]
        for j in range(5):
            out, out_mask = aug.apply(image, params, frame=j), aug.apply(mask, params, is_mask=True, frame=j)
            assert out.shape[:2] == out_mask.shape == (50, 50)
            assert (out[0, 0, 0], out[0, 0, 1]) == (ys[j], xs[j])
            np.testing.assert_array_equal(out_mask, mask[ys[j]:ys[j] + 50, xs[j]:xs[j] + 50])
    assert moved > 40  # the origin almost always moves (it stays only when start == end in both axes)


def test_missing_images_are_reported(split, tmp_path):
    with pytest.raises(YTVISFormatError, match="does not exist"):
        YTVISClipDataset(split, tmp_path / "nowhere")
