"""YouTube-VIS evaluator against hand-derived values (ytvis_eval.md).

Conventions used in the derivations: IoU thresholds .50, .55, ..., .95 (a detection matches at threshold t
when IoU >= t); AP at one threshold is the mean of the interpolated precision at the 101 recall levels
0, .01, ..., 1; AP is the mean over thresholds (and categories); ARk is the recall with the top k detections
per (video, category), averaged over thresholds.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from vita_deploy.commands import evaluate as evaluate_cli
from vita_deploy.data.ytvis_json import YTVISFormatError
from vita_deploy.evaluation import YTVISResultsError, evaluate_ytvis, video_iou

H, W = 20, 20
KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100")


def rle(mask: np.ndarray | None):
    if mask is None:
        return None
    r = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": r["size"], "counts": r["counts"].decode()}


def box(y0, y1, x0, x1, h=H, w=W):
    m = np.zeros((h, w), bool)
    m[y0:y1, x0:x1] = True
    return m


def gt_file(annotations, videos=((1, 2),), categories=(1, 2), size=(H, W)):
    """annotations: (video_id, category_id, per-frame masks or None[, iscrowd[, areas]]) tuples."""
    anns = []
    for i, (v, c, masks, *rest) in enumerate(annotations):
        areas = rest[1] if len(rest) > 1 else [int(m.sum()) if m is not None else None for m in masks]
        anns.append({"id": i + 1, "video_id": v, "category_id": c, "iscrowd": rest[0] if rest else 0,
                     "segmentations": [rle(m) for m in masks], "areas": areas})
    return {
        "videos": [{"id": vid, "height": size[0], "width": size[1], "length": n,
                    "file_names": [f"v{vid}/{i:05d}.jpg" for i in range(n)]} for vid, n in videos],
        "categories": [{"id": c, "name": f"c{c}"} for c in categories],
        "annotations": anns,
    }


def result(v, c, score, masks):
    return {"video_id": v, "category_id": c, "score": score, "segmentations": [rle(m) for m in masks]}


SQUARE = box(0, 10, 0, 10)  # 100 px: "small" (avg area <= 128^2)
OTHER = box(10, 20, 10, 20)  # 100 px, disjoint from SQUARE


def test_perfect_track():
    # IoU 1 at every threshold: precision 1 at every recall level, recall 1. Only "small" has GT.
    gt = gt_file([(1, 1, [SQUARE, SQUARE])], categories=(1,))
    m = evaluate_ytvis(gt, [result(1, 1, 0.9, [SQUARE, SQUARE])])
    assert [m[k] for k in KEYS] == pytest.approx([100, 100, 100, 100, -1, -1, 100, 100, 100], abs=1e-9)


def test_video_iou_sums_over_frames():
    # Frame 0: |D & G| = 60, |D | G| = 100; frame 1: G only (100); frame 2: both null (skipped);
    # frame 3: D only (40). IoU = 60 / (100 + 100 + 40) = 0.25.
    d = [rle(box(0, 10, 0, 6)), None, None, rle(box(0, 4, 0, 10))]
    g = [rle(SQUARE), rle(SQUARE), None, None]
    assert video_iou(d, g) == pytest.approx(0.25)
    assert video_iou([None, None], [None, None]) == 0.0  # empty union


def test_partial_overlap_iou_0_6():
    # GT 10x10 in both frames, prediction 10x6 inside it: I = 60 + 60, U = 100 + 100 -> IoU 0.6 exactly.
    # Matched at .50, .55, .60 (IoU >= t), missed at .65...95: AP = 3/10 = 30, AP50 = 100, AP75 = 0.
    # AR: recall 1 at 3 of 10 thresholds -> 30.
    gt = gt_file([(1, 1, [SQUARE, SQUARE])], categories=(1,))
    part = box(0, 10, 0, 6)
    m = evaluate_ytvis(gt, [result(1, 1, 0.9, [part, part])])
    assert (m["AP"], m["AP50"], m["AP75"], m["AR1"], m["AR10"]) == pytest.approx((30, 100, 0, 30, 30))


def test_extra_frame_counts_in_the_union():
    # GT in frames 0 and 1, prediction exact there plus 100 px in frame 2: IoU = 200 / 300 = 0.667,
    # matched at .50, .55, .60, .65 -> AP = 4/10 = 40.
    gt = gt_file([(1, 1, [SQUARE, SQUARE, None])], videos=((1, 3),), categories=(1,))
    m = evaluate_ytvis(gt, [result(1, 1, 0.9, [SQUARE, SQUARE, OTHER])])
    assert (m["AP"], m["AP50"], m["AP75"]) == pytest.approx((40, 100, 0))


def test_null_frames_are_skipped_and_empty_masks_count_as_present():
    # Frame 1 null on both sides is skipped; frames 0 and 2 exact -> IoU 1 -> AP 100. An all-zero predicted
    # mask in frame 1 is "present" but adds 0 to I and U, so it changes nothing.
    gt = gt_file([(1, 1, [SQUARE, None, SQUARE])], videos=((1, 3),), categories=(1,))
    empty = np.zeros((H, W), bool)
    assert evaluate_ytvis(gt, [result(1, 1, 0.9, [SQUARE, None, SQUARE])])["AP"] == pytest.approx(100)
    assert evaluate_ytvis(gt, [result(1, 1, 0.9, [SQUARE, empty, SQUARE])])["AP"] == pytest.approx(100)


def test_category_without_gt_is_left_out():
    # Category 2 has no GT anywhere: its precision stays -1 and is excluded from the mean, so its (higher
    # scored) false positive costs nothing: AP = category 1's 100. Alone it gives -1 everywhere.
    gt = gt_file([(1, 1, [SQUARE, SQUARE])])
    m = evaluate_ytvis(gt, [result(1, 1, 0.9, [SQUARE, SQUARE]), result(1, 2, 0.95, [SQUARE, SQUARE])])
    assert m["AP"] == pytest.approx(100) and m["AR1"] == pytest.approx(100)
    # A category-1 false positive in another video does count: ranked FP (0.95), TP (0.9): precision [0, .5],
    # recall [0, 1] -> interpolated precision .5 at every recall level -> AP 50.
    gt = gt_file([(1, 1, [SQUARE, SQUARE])], videos=((1, 2), (2, 2)))
    m = evaluate_ytvis(gt, [result(1, 1, 0.9, [SQUARE, SQUARE]), result(2, 1, 0.95, [SQUARE, SQUARE])])
    assert m["AP"] == pytest.approx(50)


def test_duplicate_detection_is_a_false_positive():
    # GTs A and B; detections A (0.9), A again (0.8, a duplicate: A is taken, IoU with B is 0 -> FP), B (0.7).
    # Ranked TP, FP, TP: precision [1, .5, .667], recall [.5, .5, 1]; interpolated precision [1, .667, .667].
    # Recall levels 0...0.50 (51 levels) -> 1, 0.51...1 (50 levels) -> 2/3: AP = (51 + 50 * 2/3) / 101.
    # AR1: one detection per (video, category) -> recall .5; AR10: 1.
    gt = gt_file([(1, 1, [SQUARE, SQUARE]), (1, 1, [OTHER, OTHER])], categories=(1,))
    dets = [result(1, 1, 0.9, [SQUARE, SQUARE]), result(1, 1, 0.8, [SQUARE, SQUARE]), result(1, 1, 0.7, [OTHER, OTHER])]
    m = evaluate_ytvis(gt, dets)
    assert m["AP"] == pytest.approx((51 + 50 * 2 / 3) / 101 * 100, abs=1e-9)
    assert (m["AR1"], m["AR10"]) == pytest.approx((50, 100))


def test_two_categories_are_averaged():
    # Category 1 perfect (AP 100), category 2 IoU 0.6 (AP 30, as above): AP = (100 + 30) / 2 = 65.
    # AP50 = (100 + 100) / 2, AP75 = (100 + 0) / 2.
    gt = gt_file([(1, 1, [SQUARE, SQUARE]), (1, 2, [OTHER, OTHER])])
    part = box(10, 20, 10, 16)
    m = evaluate_ytvis(gt, [result(1, 1, 0.9, [SQUARE, SQUARE]), result(1, 2, 0.9, [part, part])])
    assert (m["AP"], m["AP50"], m["AP75"]) == pytest.approx((65, 100, 50))


def test_max_dets_per_video_and_category():
    # 11 disjoint GT strips (rows 0..10) and 11 exact detections with falling scores: all TPs, so AP = 100;
    # the top 10 find 10 of 11 (AR10 = 100 * 10/11), the top 1 finds 1 (AR1 = 100/11), all 100 find all.
    strips = [box(r, r + 1, 0, W) for r in range(11)]
    gt = gt_file([(1, 1, [s, s]) for s in strips], categories=(1,))
    m = evaluate_ytvis(gt, [result(1, 1, 1.0 - 0.01 * i, [s, s]) for i, s in enumerate(strips)])
    assert (m["AP"], m["AR1"], m["AR10"], m["AR100"]) == pytest.approx((100, 100 / 11, 1000 / 11, 100))


def test_area_ranges_use_128_and_256_bounds():
    # A 200x200 mask: 40,000 px, in [128^2, 256^2] = [16,384, 65,536] -> medium only.
    big = np.ones((200, 200), bool)
    gt = gt_file([(1, 1, [big])], videos=((1, 1),), categories=(1,), size=(200, 200))
    m = evaluate_ytvis(gt, [result(1, 1, 1.0, [big])])
    assert (m["APs"], m["APm"], m["APl"]) == pytest.approx((-1, 100, -1))


def test_gt_area_comes_from_json_and_bounds_are_inclusive():
    # GT `areas` [None, 0, 16384, 16384]: the truthy mean is 16384 = 128^2, inside both small [0, 128^2] and
    # medium [128^2, 256^2]. The JSON value is used even though the masks are 100 px.
    gt = gt_file([(1, 1, [None, SQUARE, SQUARE, SQUARE], 0, [None, 0, 16384, 16384])], videos=((1, 4),),
                 categories=(1,))
    m = evaluate_ytvis(gt, [result(1, 1, 1.0, [None, SQUARE, SQUARE, SQUARE])])
    assert (m["APs"], m["APm"], m["APl"]) == pytest.approx((100, 100, -1))


def test_unmatched_detections_outside_the_area_range_are_ignored():
    # 200x200 video, small GT (100 px). Detections: a full-frame FP (40,000 px, medium) at 0.95, the exact
    # match at 0.9. "all": FP then TP -> precision [0, .5], recall [0, 1] -> AP 50. "small": the FP is
    # unmatched and outside [0, 128^2] -> ignored -> APs 100. "medium": the GT is ignored, no GT -> -1.
    sq = box(0, 10, 0, 10, 200, 200)
    gt = gt_file([(1, 1, [sq])], videos=((1, 1),), categories=(1,), size=(200, 200))
    m = evaluate_ytvis(gt, [result(1, 1, 0.95, [np.ones((200, 200), bool)]), result(1, 1, 0.9, [sq])])
    assert (m["AP"], m["APs"], m["APm"]) == pytest.approx((50, 100, -1))


def test_crowd_gt_is_ignored():
    # GT A (normal) and GT B (iscrowd): only A has to be found. One exact detection of A -> recall 1, AP 100.
    # A detection of B matches the crowd GT and is ignored rather than counted as a false positive.
    gt = gt_file([(1, 1, [SQUARE, SQUARE]), (1, 1, [OTHER, OTHER], 1)], categories=(1,))
    assert evaluate_ytvis(gt, [result(1, 1, 0.9, [SQUARE, SQUARE])])["AP"] == pytest.approx(100)
    dets = [result(1, 1, 0.95, [OTHER, OTHER]), result(1, 1, 0.9, [SQUARE, SQUARE])]
    assert evaluate_ytvis(gt, dets)["AP"] == pytest.approx(100)


def test_no_results_gives_zero():
    # GT but no detections: recall 0 and precision 0 where there is GT; -1 where there is none.
    gt = gt_file([(1, 1, [SQUARE, SQUARE])], categories=(1,))
    m = evaluate_ytvis(gt, [])
    assert (m["AP"], m["APs"], m["APm"], m["AR10"]) == (0.0, 0.0, -1.0, 0.0)


def test_bad_results_are_named():
    gt = gt_file([(1, 1, [SQUARE, SQUARE])], categories=(1,))
    good = result(1, 1, 0.9, [SQUARE, SQUARE])
    cases = [
        (result(1, 1, 0.9, [SQUARE]), "1 segmentations for video 1 of 2 frames"),  # reference would truncate
        (result(1, 1, 0.9, [SQUARE, SQUARE, SQUARE]), "3 segmentations for video 1 of 2 frames"),
        (result(5, 1, 0.9, [SQUARE, SQUARE]), "video_id 5 is not in the ground truth"),
        (result(1, 0, 0.9, [SQUARE, SQUARE]), "category_id 0"),
        ({**good, "score": None}, "score"),
        ({**good, "segmentations": rle(SQUARE)}, "segmentations"),
        ({k: v for k, v in good.items() if k != "score"}, "no 'score'"),
        (result(1, 1, 0.9, [np.ones((H, W + 1), bool), SQUARE]), "size"),
    ]
    for bad, message in cases:
        with pytest.raises(YTVISResultsError, match=message):
            evaluate_ytvis(gt, [good, bad])
    with pytest.raises(YTVISFormatError, match="no annotations"):
        evaluate_ytvis({**gt, "annotations": None}, [good])


def test_cli(tmp_path, capsys):
    gt = gt_file([(1, 1, [SQUARE, SQUARE])], categories=(1,))
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "res.json").write_text(json.dumps([result(1, 1, 0.9, [SQUARE, SQUARE])]))
    args = ["--gt", str(tmp_path / "gt.json"), "--results", str(tmp_path / "res.json")]
    assert evaluate_cli.main([*args, "--out", str(tmp_path / "m.json")]) == 0
    assert json.loads((tmp_path / "m.json").read_text())["AP"] == pytest.approx(100)
    assert "AP50" in capsys.readouterr().out
    (tmp_path / "short.json").write_text(json.dumps([result(1, 1, 0.9, [SQUARE])]))
    assert evaluate_cli.main([args[0], args[1], "--results", str(tmp_path / "short.json")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: result 0: 1 segmentations for video 1 of 2 frames") and "Traceback" not in err
    (tmp_path / "bad.json").write_text("{not json")
    assert evaluate_cli.main(["--gt", str(tmp_path / "bad.json"), "--results", str(tmp_path / "res.json")]) == 2
    assert "not valid JSON" in capsys.readouterr().err
