"""YouTube-VIS evaluator against hand-derived values (ytvis_eval.md)."""
from __future__ import annotations

import json

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from vita_deploy import evaluate as evaluate_cli
from vita_deploy.evaluation import YTVISResultsError, evaluate_ytvis

H, W = 20, 20


def rle(mask: np.ndarray | None, compressed: bool = True):
    if mask is None:
        return None
    r = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    r["counts"] = r["counts"].decode()
    return r


def box(y0, y1, x0, x1):
    m = np.zeros((H, W), bool)
    m[y0:y1, x0:x1] = True
    return m


def gt_file(annotations, videos=((1, 2),), categories=(1, 2)):
    return {
        "videos": [{"id": vid, "width": W, "height": H, "length": n, "file_names": [f"v{vid}/{i}.jpg" for i in range(n)]}
                   for vid, n in videos],
        "categories": [{"id": c, "name": f"c{c}"} for c in categories],
        "annotations": [{"id": i + 1, "video_id": v, "category_id": c, "iscrowd": 0,
                         "segmentations": [rle(m) for m in masks],
                         "areas": [int(m.sum()) if m is not None else None for m in masks]}
                        for i, (v, c, masks) in enumerate(annotations)],
    }


def result(v, c, score, masks):
    return {"video_id": v, "category_id": c, "score": score, "segmentations": [rle(m) for m in masks]}


SQUARE = box(0, 10, 0, 10)  # 100 px, "small" (avg area <= 128^2)


def test_perfect_track():
    gt = gt_file([(1, 1, [SQUARE, SQUARE])], categories=(1,))
    m = evaluate_ytvis(gt, [result(1, 1, 0.9, [SQUARE, SQUARE])])
    assert [m[k] for k in ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10")] == pytest.approx(
        [100.0, 100.0, 100.0, 100.0, -1.0, -1.0, 100.0, 100.0], abs=1e-9)


def test_partial_overlap_iou_0_6():
    # GT 10x10 in both frames; prediction 10x6 inside it: I = 60+60, U = 100+100 -> IoU 0.6 exactly.
    # Matched at thresholds .50, .55, .60 (IoU >= t) and missed at .65..95: AP = 3/10 = 30, AP50 = 100, AP75 = 0.
    gt = gt_file([(1, 1, [SQUARE, SQUARE])], categories=(1,))
    part = box(0, 10, 0, 6)
    m = evaluate_ytvis(gt, [result(1, 1, 0.9, [part, part])])
    assert m["AP"] == pytest.approx(30.0) and m["AP50"] == pytest.approx(100.0) and m["AP75"] == 0.0
    assert m["AR10"] == pytest.approx(30.0)  # recall 1 at 3 of 10 thresholds


def test_extra_frame_counts_in_the_union():
    # GT in frames 0 and 1, prediction exact there plus a 100 px mask in frame 2: IoU = 200 / 300 = 0.667.
    # Matched at .50, .55, .60, .65 -> AP = 40.
    gt = gt_file([(1, 1, [SQUARE, SQUARE, None])], videos=((1, 3),), categories=(1,))
    m = evaluate_ytvis(gt, [result(1, 1, 0.9, [SQUARE, SQUARE, box(10, 20, 10, 20)])])
    assert m["AP"] == pytest.approx(40.0) and m["AP50"] == pytest.approx(100.0) and m["AP75"] == 0.0


def test_null_frames_are_skipped_and_empty_masks_count_as_present():
    # Both null in frame 1 (skipped); frame 0 exact -> IoU 1. An all-zero predicted mask adds 0 to I and U.
    gt = gt_file([(1, 1, [SQUARE, None, SQUARE])], videos=((1, 3),), categories=(1,))
    empty = np.zeros((H, W), bool)
    m = evaluate_ytvis(gt, [result(1, 1, 0.9, [SQUARE, empty, SQUARE])])
    assert m["AP"] == pytest.approx(100.0)
    seg = result(1, 1, 0.9, [SQUARE, None, SQUARE])
    assert evaluate_ytvis(gt, [seg])["AP"] == pytest.approx(100.0)


def test_category_without_gt_is_ignored():
    # Category 2 has no GT: its false positive does not lower AP (category 2 precision is -1, excluded).
    gt = gt_file([(1, 1, [SQUARE, SQUARE])])
    m = evaluate_ytvis(gt, [result(1, 1, 0.9, [SQUARE, SQUARE]), result(1, 2, 0.95, [SQUARE, SQUARE])])
    assert m["AP"] == pytest.approx(100.0)


def test_duplicate_detection_is_a_false_positive():
    # Two GTs (categories 1), three detections: the top one duplicates GT A, the second duplicates GT A again
    # (false positive), the third matches GT B. Ranked: TP, FP, TP -> precision [1, .5, .667], recall [.5, .5, 1].
    # Interpolated precision: recall thresholds 0..0.5 -> 1.0 (51 points), 0.51..1.0 -> 0.667 (50 points).
    # AP (all thresholds identical, IoU 1) = (51 * 1 + 50 * 2/3) / 101.
    a, b = SQUARE, box(10, 20, 10, 20)
    gt = gt_file([(1, 1, [a, a]), (1, 1, [b, b])], categories=(1,))
    dets = [result(1, 1, 0.9, [a, a]), result(1, 1, 0.8, [a, a]), result(1, 1, 0.7, [b, b])]
    expected = (51 * 1.0 + 50 * (2 / 3)) / 101 * 100
    m = evaluate_ytvis(gt, dets)
    assert m["AP"] == pytest.approx(expected, abs=1e-9)
    assert m["AR1"] == pytest.approx(50.0) and m["AR10"] == pytest.approx(100.0)


def test_two_categories_are_averaged():
    # Category 1 perfect (AP 100), category 2 IoU 0.6 (AP 30): mean 65.
    other = box(10, 20, 10, 20)
    part = box(10, 20, 10, 16)
    gt = gt_file([(1, 1, [SQUARE, SQUARE]), (1, 2, [other, other])])
    m = evaluate_ytvis(gt, [result(1, 1, 0.9, [SQUARE, SQUARE]), result(1, 2, 0.9, [part, part])])
    assert m["AP"] == pytest.approx(65.0)


def test_area_ranges_use_128_and_256_bounds():
    big_h, big_w = 200, 200  # 40,000 px > 128^2 = 16,384 -> "medium"
    gt = {"videos": [{"id": 1, "width": big_w, "height": big_h, "length": 1, "file_names": ["a.jpg"]}],
          "categories": [{"id": 1, "name": "x"}],
          "annotations": [{"id": 1, "video_id": 1, "category_id": 1, "iscrowd": 0, "areas": [40000],
                           "segmentations": [rle(np.ones((big_h, big_w), bool))]}]}
    m = evaluate_ytvis(gt, [{"video_id": 1, "category_id": 1, "score": 1.0,
                             "segmentations": [rle(np.ones((big_h, big_w), bool))]}])
    assert (m["APs"], m["APm"], m["APl"]) == pytest.approx((-1.0, 100.0, -1.0))


def test_length_mismatch_is_an_error_not_a_truncation():
    gt = gt_file([(1, 1, [SQUARE, SQUARE])], categories=(1,))
    with pytest.raises(YTVISResultsError, match="1 segmentations for video 1 of 2 frames"):
        evaluate_ytvis(gt, [result(1, 1, 0.9, [SQUARE])])
    with pytest.raises(YTVISResultsError, match="video_id 5 is not in the ground truth"):
        evaluate_ytvis(gt, [result(5, 1, 0.9, [SQUARE, SQUARE])])


def test_no_results_gives_zero():
    gt = gt_file([(1, 1, [SQUARE, SQUARE])], categories=(1,))
    m = evaluate_ytvis(gt, [])
    assert m["AP"] == 0.0 and m["AR10"] == 0.0


def test_cli(tmp_path, capsys):
    gt = gt_file([(1, 1, [SQUARE, SQUARE])], categories=(1,))
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "res.json").write_text(json.dumps([result(1, 1, 0.9, [SQUARE, SQUARE])]))
    assert evaluate_cli.main(["--gt", str(tmp_path / "gt.json"), "--results", str(tmp_path / "res.json"),
                              "--out", str(tmp_path / "m.json")]) == 0
    assert json.loads((tmp_path / "m.json").read_text())["AP"] == pytest.approx(100.0)
    (tmp_path / "bad.json").write_text("{not json")
    assert evaluate_cli.main(["--gt", str(tmp_path / "bad.json"), "--results", str(tmp_path / "res.json")]) == 2
    assert "not valid JSON" in capsys.readouterr().err
