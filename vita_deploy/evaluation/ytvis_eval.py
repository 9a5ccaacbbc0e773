"""YouTube-VIS evaluation, reimplemented on pycocotools' mask utilities (ytvis_eval.md).

The reference (github youtubevos/cocoapi `PythonAPI/pycocotools/ytvoseval.py`) is COCO's evaluation with
the image replaced by a video:
- video IoU of a (detection, ground truth) pair = sum over frames of |D & G| / sum over frames of |D | G|;
  a frame where only one side has a mask adds that mask's area to the union, frames where both are null are
  skipped, an all-zero mask counts as present (adds 0 to both);
- `avg_area` = mean of the truthy per-frame areas (GT from the JSON `areas` when present, detections from
  their RLEs); area ranges all / small [0, 128^2] / medium [128^2, 256^2] / large [256^2, 1e10], inclusive;
- per (video, category): detections sorted by score (stable), cut to 100, greedy matching at IoU
  .50:.05:.95; crowd GTs and GTs outside the area range are ignored, as are unmatched detections outside it;
- COCO accumulate (101-point interpolated precision, T x R x K x A x M) and summarize; a metric with no GT
  is -1.
Deliberate differences, none of which changes a number on valid input:
- a result whose number of frames differs from the video's length is an error (the reference truncates
  silently with `zip`), as is an RLE whose size is not the video's (the reference scores it IoU 0);
- an empty results list scores 0 (the reference crashes on `anns[0]`; its matching logic gives 0);
- matching uses internal 1-based ids, so a GT with JSON id 0 still counts as matched;
- it runs on numpy 2 (the reference's `np.float` and float `linspace` counts fail there).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from numbers import Real
from pathlib import Path

import numpy as np
from pycocotools import mask as mask_utils

from vita_deploy.data.ytvis_json import YTVISFormatError, load_ytvis_json, segmentation_problem, segmentation_to_rle

IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)  # T = 10
RECALL_THRESHOLDS = np.linspace(0.0, 1.0, 101)  # R = 101
MAX_DETS = (1, 10, 100)  # M = 3, per (video, category)
AREA_RANGES = {"all": (0, 1e5**2), "small": (0, 128**2), "medium": (128**2, 256**2), "large": (256**2, 1e5**2)}
METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100")


class YTVISResultsError(ValueError):
    """Malformed results; the message names the result, the video and the fix."""


@dataclass
class _Track:
    """One GT instance or one detection: per-frame compressed RLEs (None where absent) and their areas."""
    uid: int  # 1-based; 0 means "unmatched" in the match arrays
    video_id: int
    category_id: int
    rles: list
    areas: list  # per-frame mask areas from the RLEs (None where absent), used for the union
    avg_area: float
    score: float = 1.0
    iscrowd: bool = False


def _avg_area(areas: list) -> float:
    """Mean of the truthy areas (None and 0 excluded), 0 when there are none: the reference's `avg_area`."""
    truthy = [a for a in areas if a]
    return float(np.mean(truthy)) if truthy else 0.0


def _rle_areas(rles: list) -> list:
    return [int(mask_utils.area(r)) if r is not None else None for r in rles]


def _read_results(results: str | Path | list) -> list:
    if isinstance(results, list):
        return results
    path = Path(results)
    if not path.is_file():
        raise YTVISResultsError(f"{path} does not exist: pass the results JSON written by `vita-deploy infer`")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise YTVISResultsError(f"{path} is not valid JSON ({e}); the file is truncated or corrupt") from None
    if not isinstance(data, list):
        raise YTVISResultsError(f"{path}: results must be a JSON list of {{video_id, category_id, score, "
                                f"segmentations}}, found {type(data).__name__}")
    return data


def _load_results(results: str | Path | list, gt: dict) -> list[_Track]:
    """Validate results against the GT videos and categories; returns detections with RLEs and areas."""
    videos = {v["id"]: v for v in gt["videos"]}
    categories = {c["id"] for c in gt["categories"]}
    dts = []
    for i, r in enumerate(_read_results(results)):
        if not isinstance(r, dict):
            raise YTVISResultsError(f"result {i} is not an object {{video_id, category_id, score, segmentations}}")
        for key in ("video_id", "category_id", "score", "segmentations"):
            if key not in r:
                raise YTVISResultsError(f"result {i} has no '{key}'; each result needs video_id, category_id, "
                                        "score and segmentations")
        for key in ("video_id", "category_id"):
            if isinstance(r[key], bool) or not isinstance(r[key], int):
                raise YTVISResultsError(f"result {i}: '{key}' must be an int, found {r[key]!r:.60}")
        if r["video_id"] not in videos:
            raise YTVISResultsError(f"result {i}: video_id {r['video_id']!r} is not in the ground truth (results do "
                                    "not correspond to this annotation file)")
        if r["category_id"] not in categories:
            raise YTVISResultsError(f"result {i}: category_id {r['category_id']!r} is not among the ground-truth "
                                    f"categories {sorted(categories)}; write dataset ids, not contiguous indices")
        score = r["score"]
        if isinstance(score, bool) or not isinstance(score, Real) or not math.isfinite(score) or score < 0:
            raise YTVISResultsError(f"result {i}: 'score' must be a finite number >= 0, found {score!r:.60}")
        video = videos[r["video_id"]]
        segs = r["segmentations"]
        if not isinstance(segs, list) or len(segs) != video["length"]:
            found = len(segs) if isinstance(segs, list) else type(segs).__name__
            raise YTVISResultsError(
                f"result {i}: {found} segmentations for video {r['video_id']} of {video['length']} frames; write one "
                "entry per frame (null where the instance is absent)")
        for t, s in enumerate(segs):
            problem = segmentation_problem(s, video["height"], video["width"])
            if problem:
                raise YTVISResultsError(f"result {i} (video {r['video_id']}) segmentations[{t}]: {problem}")
        rles = [segmentation_to_rle(s, video["height"], video["width"]) for s in segs]
        areas = _rle_areas(rles)
        dts.append(_Track(i + 1, r["video_id"], r["category_id"], rles, areas, _avg_area(areas), float(score)))
    return dts


def _prepare_gt(gt: dict) -> list[_Track]:
    """GT instances; `avg_area` from the JSON `areas` when present (the reference never recomputes it)."""
    videos = {v["id"]: v for v in gt["videos"]}
    out = []
    for i, a in enumerate(gt["annotations"]):
        video = videos[a["video_id"]]
        rles = [segmentation_to_rle(s, video["height"], video["width"]) for s in a["segmentations"]]
        areas = _rle_areas(rles)
        avg = _avg_area(a["areas"] if a.get("areas") is not None else areas)
        out.append(_Track(i + 1, a["video_id"], a["category_id"], rles, areas, avg, iscrowd=bool(a.get("iscrowd"))))
    return out


def video_iou(d_seq: list, g_seq: list, d_areas: list | None = None, g_areas: list | None = None) -> float:
    """sum_t |D_t & G_t| / sum_t |D_t | G_t| over per-frame compressed RLEs (None = absent); 0 if the union
    is empty. Per-frame areas may be passed to skip recomputing them; sequences must have equal lengths."""
    if len(d_seq) != len(g_seq):
        raise ValueError(f"video_iou: {len(d_seq)} detection frames vs {len(g_seq)} ground-truth frames")
    d_areas = d_areas if d_areas is not None else _rle_areas(d_seq)
    g_areas = g_areas if g_areas is not None else _rle_areas(g_seq)
    inter = union = 0
    for d, g, ad, ag in zip(d_seq, g_seq, d_areas, g_areas):
        if d is not None and g is not None:
            i = int(mask_utils.area(mask_utils.merge([d, g], intersect=True)))
            inter += i
            union += ad + ag - i  # |D | G| = |D| + |G| - |D & G| (sizes are validated equal)
        elif d is not None:
            union += ad
        elif g is not None:
            union += ag
    return inter / union if union > 0 else 0.0


def _match(dts: list[_Track], gts: list[_Track], ious: np.ndarray, area: tuple[float, float]) -> dict:
    """COCO `evaluateImg` for one (video, category) and area range: greedy matching at every IoU threshold.

    dts are sorted by score (at most 100); ious is (D, G). Returns scores (D,), matched GT uid per threshold
    (T, D) (0 = unmatched), detection ignore flags (T, D) and GT ignore flags (G,)."""
    gt_ignore = np.array([g.iscrowd or not (area[0] <= g.avg_area <= area[1]) for g in gts], dtype=bool)
    order = np.argsort(gt_ignore, kind="mergesort")  # ignored GTs last
    gts = [gts[j] for j in order]
    gt_ignore = gt_ignore[order]
    ious = ious[:, order]  # (D, G)
    n_t, n_d, n_g = len(IOU_THRESHOLDS), len(dts), len(gts)
    gt_matched = np.zeros((n_t, n_g), dtype=np.int64)
    dt_matched = np.zeros((n_t, n_d), dtype=np.int64)
    dt_ignore = np.zeros((n_t, n_d), dtype=bool)
    for t, thr in enumerate(IOU_THRESHOLDS):
        for d in range(n_d):
            best, match = min(thr, 1 - 1e-10), -1
            for g in range(n_g):
                if gt_matched[t, g] and not gts[g].iscrowd:
                    continue  # taken (a crowd GT may absorb several detections)
                if match > -1 and not gt_ignore[match] and gt_ignore[g]:
                    break  # ignored GTs come last: a real match is never traded for an ignored one
                if ious[d, g] < best:
                    continue
                best, match = ious[d, g], g
            if match == -1:
                continue
            dt_ignore[t, d] = gt_ignore[match]
            dt_matched[t, d] = gts[match].uid
            gt_matched[t, match] = dts[d].uid
    outside = np.array([not (area[0] <= d.avg_area <= area[1]) for d in dts], dtype=bool)  # (D,)
    dt_ignore |= (dt_matched == 0) & outside[None, :]
    return {"scores": np.array([d.score for d in dts], dtype=np.float64), "matched": dt_matched,
            "dt_ignore": dt_ignore, "gt_ignore": gt_ignore}


def _precision_recall(entries: list[dict], max_det: int) -> tuple[np.ndarray, np.ndarray] | None:
    """COCO `accumulate` for one (category, area range, maxDet): precision (T, R) and recall (T,), or None
    when no GT counts (the caller leaves -1 there)."""
    gt_ignore = np.concatenate([e["gt_ignore"] for e in entries])
    num_gt = int(np.count_nonzero(~gt_ignore))
    if num_gt == 0:
        return None
    scores = np.concatenate([e["scores"][:max_det] for e in entries])
    order = np.argsort(-scores, kind="mergesort")  # stable: ties keep video order, then score order
    matched = np.concatenate([e["matched"][:, :max_det] for e in entries], axis=1)[:, order]  # (T, N)
    ignore = np.concatenate([e["dt_ignore"][:, :max_det] for e in entries], axis=1)[:, order]  # (T, N)
    tps = np.cumsum((matched != 0) & ~ignore, axis=1).astype(np.float64)
    fps = np.cumsum((matched == 0) & ~ignore, axis=1).astype(np.float64)
    n_t, n_r = len(IOU_THRESHOLDS), len(RECALL_THRESHOLDS)
    precision, recall = np.zeros((n_t, n_r)), np.zeros(n_t)
    if tps.shape[1] == 0:
        return precision, recall  # GT but no detections: precision and recall 0
    for t in range(n_t):
        rc = tps[t] / num_gt
        pr = tps[t] / (tps[t] + fps[t] + np.spacing(1))
        pr = np.maximum.accumulate(pr[::-1])[::-1]  # interpolated: best precision at any higher recall
        idx = np.searchsorted(rc, RECALL_THRESHOLDS, side="left")  # (R,)
        valid = idx < len(pr)  # recall levels never reached keep precision 0
        precision[t, valid] = pr[idx[valid]]
        recall[t] = rc[-1]
    return precision, recall


def _mean(x: np.ndarray) -> float:
    x = x[x > -1]
    return float(np.mean(x)) if x.size else -1.0


def evaluate_ytvis(gt: str | Path | dict, results: str | Path | list, *, verbose: bool = False) -> dict[str, float]:
    """YouTube-VIS metrics of `results` against `gt`, in percent.

    gt: a ground-truth JSON path or its parsed dict (needs annotations). results: a results JSON path or a list
    of {video_id, category_id, score, segmentations: one RLE or null per frame}. Returns AP, AP50, AP75, APs,
    APm, APl, AR1, AR10, AR100; a metric without any ground truth (e.g. APl when no instance is large) is -1.
    Raises YTVISFormatError for a bad GT file and YTVISResultsError for bad results."""
    gt = load_ytvis_json(gt)
    if not gt["annotations"]:
        raise YTVISFormatError("the ground-truth file has no annotations (a val/test file): local evaluation "
                               "needs a labelled split, e.g. a held-out part of train")
    dts, gts = _load_results(results, gt), _prepare_gt(gt)
    cat_index = {cid: k for k, cid in enumerate(sorted(c["id"] for c in gt["categories"]))}
    pairs: dict[tuple[int, int], tuple[list, list]] = {}
    for g in gts:
        pairs.setdefault((g.video_id, g.category_id), ([], []))[1].append(g)
    for d in dts:
        pairs.setdefault((d.video_id, d.category_id), ([], []))[0].append(d)
    areas = list(AREA_RANGES.values())
    evals: dict[tuple[int, int], list[dict]] = {}  # (category index, area index) -> per-video match records
    for video_id, cat in sorted(pairs):  # video order decides score ties, as in the reference
        pair_dts, pair_gts = pairs[video_id, cat]
        order = np.argsort([-d.score for d in pair_dts], kind="mergesort")
        pair_dts = [pair_dts[i] for i in order][:MAX_DETS[-1]]
        ious = np.zeros((len(pair_dts), len(pair_gts)))  # (D, G)
        for i, d in enumerate(pair_dts):
            for j, g in enumerate(pair_gts):
                ious[i, j] = video_iou(d.rles, g.rles, d.areas, g.areas)
        for a, area in enumerate(areas):
            evals.setdefault((cat_index[cat], a), []).append(_match(pair_dts, pair_gts, ious, area))
    n_t, n_r, n_k, n_a, n_m = len(IOU_THRESHOLDS), len(RECALL_THRESHOLDS), len(cat_index), len(areas), len(MAX_DETS)
    precision = -np.ones((n_t, n_r, n_k, n_a, n_m))  # -1 where a category has no GT
    recall = -np.ones((n_t, n_k, n_a, n_m))
    for (k, a), entries in evals.items():
        for m, max_det in enumerate(MAX_DETS):
            pr = _precision_recall(entries, max_det)
            if pr is not None:
                precision[:, :, k, a, m], recall[:, k, a, m] = pr
    t50, t75 = 0, 5  # IOU_THRESHOLDS[0] == .5, [5] == .75
    stats = {
        "AP": _mean(precision[:, :, :, 0, 2]), "AP50": _mean(precision[t50, :, :, 0, 2]),
        "AP75": _mean(precision[t75, :, :, 0, 2]), "APs": _mean(precision[:, :, :, 1, 2]),
        "APm": _mean(precision[:, :, :, 2, 2]), "APl": _mean(precision[:, :, :, 3, 2]),
        "AR1": _mean(recall[:, :, 0, 0]), "AR10": _mean(recall[:, :, 0, 1]), "AR100": _mean(recall[:, :, 0, 2]),
    }
    out = {k: (v * 100.0 if v >= 0 else -1.0) for k, v in stats.items()}
    if verbose:
        print(format_metrics(out))
    return out


def format_metrics(metrics: dict[str, float]) -> str:
    """A two-line table: metric names over values (percent, -1 where there is no GT)."""
    names = " | ".join(f"{k:>6s}" for k in metrics)
    values = " | ".join(f"{v:6.2f}" for v in metrics.values())
    return f"{names}\n{values}"
