"""YouTube-VIS evaluation, reimplemented on pycocotools' mask utilities (ytvis_eval.md).

The reference (youtubevos/cocoapi `ytvoseval.py`) is COCO's evaluation with an image replaced by a video:
- video IoU of a (detection, ground truth) pair = sum over frames of |D & G| / sum over frames of |D | G|;
  a frame where only one side has a mask adds that area to the union; frames where both are null are skipped;
- areas: `avg_area` = mean of the truthy per-frame areas (GT from the JSON `areas`, detections from RLEs),
  ranges all / small [0, 128^2] / medium [128^2, 256^2] / large [256^2, 1e10], bounds inclusive;
- greedy matching by score per (video, category) at IoU .50:.05:.95, maxDets 1/10/100, 101-point
  interpolated precision; metrics with no ground truth are -1.
Deliberate differences: a prediction whose number of frames differs from the video's length is an error
(the reference silently truncates with `zip`), and it runs on numpy 2 (no `np.float`).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from pycocotools import mask as mask_utils

from vita_deploy.data.ytvis_json import load_ytvis_json, segmentation_to_rle

IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)
RECALL_THRESHOLDS = np.linspace(0.0, 1.0, 101)
MAX_DETS = (1, 10, 100)
AREA_RANGES = {"all": (0, 1e5**2), "small": (0, 128**2), "medium": (128**2, 256**2), "large": (256**2, 1e5**2)}
METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100")


class YTVISResultsError(ValueError):
    """Malformed results; the message names the result, the video and the fix."""


def _avg_area(areas: list) -> float:
    truthy = [a for a in areas if a]
    return float(np.mean(truthy)) if truthy else 0.0


def _load_results(results: str | Path | list, gt: dict) -> list[dict]:
    if not isinstance(results, list):
        path = Path(results)
        if not path.is_file():
            raise YTVISResultsError(f"{path} does not exist: pass the results JSON written by vita_deploy.infer")
        try:
            results = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise YTVISResultsError(f"{path} is not valid JSON ({e})") from None
        if not isinstance(results, list):
            raise YTVISResultsError(f"{path}: results must be a list of {{video_id, category_id, score, "
                                    "segmentations}}")
    videos = {v["id"]: v for v in gt["videos"]}
    categories = {c["id"] for c in gt["categories"]}
    dts = []
    for i, r in enumerate(results):
        for key in ("video_id", "category_id", "score", "segmentations"):
            if key not in r:
                raise YTVISResultsError(f"result {i} has no '{key}'")
        if r["video_id"] not in videos:
            raise YTVISResultsError(f"result {i}: video_id {r['video_id']} is not in the ground truth (results do "
                                    "not correspond to this annotation file)")
        if r["category_id"] not in categories:
            raise YTVISResultsError(f"result {i}: category_id {r['category_id']} is not among the ground-truth "
                                    f"categories {sorted(categories)}")
        video = videos[r["video_id"]]
        if len(r["segmentations"]) != video["length"]:
            raise YTVISResultsError(
                f"result {i}: {len(r['segmentations'])} segmentations for video {r['video_id']} of {video['length']} "
                "frames; write one entry per frame (null where the instance is absent)")
        rles = [segmentation_to_rle(s, video["height"], video["width"]) for s in r["segmentations"]]
        areas = [float(mask_utils.area(s)) if s is not None else None for s in rles]
        dts.append({"id": i + 1, "video_id": r["video_id"], "category_id": r["category_id"], "score": float(r["score"]),
                    "rles": rles, "avg_area": _avg_area(areas)})
    return dts


def _prepare_gt(gt: dict) -> list[dict]:
    videos = {v["id"]: v for v in gt["videos"]}
    out = []
    for a in gt["annotations"]:
        video = videos[a["video_id"]]
        rles = [segmentation_to_rle(s, video["height"], video["width"]) for s in a["segmentations"]]
        areas = a.get("areas") or [float(mask_utils.area(s)) if s is not None else None for s in rles]
        out.append({"id": a["id"], "video_id": a["video_id"], "category_id": a["category_id"], "rles": rles,
                    "avg_area": _avg_area(areas), "iscrowd": int(a.get("iscrowd", 0) or 0)})
    return out


def video_iou(d_seq: list, g_seq: list) -> float:
    """sum_t |D_t & G_t| / sum_t |D_t | G_t| over frames where either exists (0 if the union is empty)."""
    inter = union = 0.0
    for d, g in zip(d_seq, g_seq):  # equal lengths are enforced when loading
        if d is not None and g is not None:
            inter += mask_utils.area(mask_utils.merge([d, g], intersect=True))
            union += mask_utils.area(mask_utils.merge([d, g], intersect=False))
        elif d is not None:
            union += mask_utils.area(d)
        elif g is not None:
            union += mask_utils.area(g)
    return inter / union if union > 0 else 0.0


def _evaluate_video(dts: list[dict], gts: list[dict], ious: np.ndarray, area: tuple[float, float], max_det: int
                    ) -> dict | None:
    """COCO `evaluateImg` for one (video, category): greedy matching at every IoU threshold."""
    if not dts and not gts:
        return None
    gt_ignore = np.array([g["iscrowd"] or not (area[0] <= g["avg_area"] <= area[1]) for g in gts], dtype=bool)
    gt_order = np.argsort(gt_ignore, kind="mergesort")
    gts = [gts[i] for i in gt_order]
    gt_ignore = gt_ignore[gt_order]
    dts = dts[:max_det]  # already sorted by score
    ious = ious[:len(dts)][:, gt_order] if len(gts) and len(dts) else np.zeros((len(dts), len(gts)))
    n_t = len(IOU_THRESHOLDS)
    gt_matched = np.zeros((n_t, len(gts)))
    dt_matched = np.zeros((n_t, len(dts)))
    dt_ignore = np.zeros((n_t, len(dts)), dtype=bool)
    for t, thr in enumerate(IOU_THRESHOLDS):
        for d in range(len(dts)):
            best, match = min(thr, 1 - 1e-10), -1
            for g in range(len(gts)):
                if gt_matched[t, g] > 0 and not gts[g]["iscrowd"]:
                    continue
                if match > -1 and not gt_ignore[match] and gt_ignore[g]:
                    break  # ignored GTs come last: a real match is never traded for an ignored one
                if ious[d, g] < best:
                    continue
                best, match = ious[d, g], g
            if match == -1:
                continue
            dt_ignore[t, d] = gt_ignore[match]
            dt_matched[t, d] = gts[match]["id"]
            gt_matched[t, match] = dts[d]["id"]
    outside = np.array([not (area[0] <= d["avg_area"] <= area[1]) for d in dts], dtype=bool).reshape(1, -1)
    dt_ignore = dt_ignore | ((dt_matched == 0) & outside)
    return {"scores": np.array([d["score"] for d in dts]), "matched": dt_matched, "dt_ignore": dt_ignore,
            "gt_ignore": gt_ignore}


def _accumulate(evals: dict[tuple[int, int, int], list[dict]], n_cats: int) -> tuple[np.ndarray, np.ndarray]:
    """COCO `accumulate`: precision (T, R, K, A, M) and recall (T, K, A, M), -1 where a category has no GT."""
    n_t, n_r, n_a, n_m = len(IOU_THRESHOLDS), len(RECALL_THRESHOLDS), len(AREA_RANGES), len(MAX_DETS)
    precision = -np.ones((n_t, n_r, n_cats, n_a, n_m))
    recall = -np.ones((n_t, n_cats, n_a, n_m))
    for k in range(n_cats):
        for a in range(n_a):
            for m, max_det in enumerate(MAX_DETS):
                entries = [e for e in evals.get((k, a, m), []) if e is not None]
                if not entries:
                    continue
                scores = np.concatenate([e["scores"][:max_det] for e in entries])
                order = np.argsort(-scores, kind="mergesort")
                matched = np.concatenate([e["matched"][:, :max_det] for e in entries], axis=1)[:, order]
                ignore = np.concatenate([e["dt_ignore"][:, :max_det] for e in entries], axis=1)[:, order]
                gt_ignore = np.concatenate([e["gt_ignore"] for e in entries])
                num_gt = int(np.count_nonzero(~gt_ignore))
                if num_gt == 0:
                    continue
                tps = np.cumsum((matched != 0) & ~ignore, axis=1).astype(np.float64)
                fps = np.cumsum((matched == 0) & ~ignore, axis=1).astype(np.float64)
                for t, (tp, fp) in enumerate(zip(tps, fps)):
                    rc = tp / num_gt
                    pr = tp / (fp + tp + np.spacing(1))
                    recall[t, k, a, m] = rc[-1] if len(tp) else 0.0
                    pr = np.maximum.accumulate(pr[::-1])[::-1] if len(pr) else pr  # precision envelope
                    q = np.zeros(n_r)
                    idx = np.searchsorted(rc, RECALL_THRESHOLDS, side="left")
                    valid = idx < len(pr)
                    q[valid] = pr[idx[valid]]
                    precision[t, :, k, a, m] = q
    return precision, recall


def _mean(x: np.ndarray) -> float:
    x = x[x > -1]
    return float(np.mean(x)) if x.size else -1.0


def evaluate_ytvis(gt: str | Path | dict, results: str | Path | list, *, verbose: bool = False) -> dict[str, float]:
    """YouTube-VIS metrics of `results` against `gt`, in percent: AP, AP50, AP75, APs, APm, APl, AR1, AR10,
    AR100. A metric without any ground truth (e.g. APl when no instance is large) is -1."""
    gt = load_ytvis_json(gt)
    if not gt["annotations"]:
        raise YTVISResultsError("the ground-truth file has no annotations (a val/test file): local evaluation "
                                "needs a labelled split, e.g. a held-out part of train")
    dts = _load_results(results, gt)
    gts = _prepare_gt(gt)
    cat_ids = sorted(c["id"] for c in gt["categories"])
    by_pair: dict[tuple[int, int], tuple[list, list]] = {}
    for g in gts:
        by_pair.setdefault((g["video_id"], g["category_id"]), ([], []))[1].append(g)
    for d in dts:
        by_pair.setdefault((d["video_id"], d["category_id"]), ([], []))[0].append(d)
    evals: dict[tuple[int, int, int], list[dict]] = {}
    for (video_id, cat), (pair_dts, pair_gts) in by_pair.items():
        order = np.argsort([-d["score"] for d in pair_dts], kind="mergesort")
        pair_dts = [pair_dts[i] for i in order][:MAX_DETS[-1]]
        ious = np.array([[video_iou(d["rles"], g["rles"]) for g in pair_gts] for d in pair_dts]).reshape(
            len(pair_dts), len(pair_gts))
        k = cat_ids.index(cat)
        for a, area in enumerate(AREA_RANGES.values()):
            for m, max_det in enumerate(MAX_DETS):
                evals.setdefault((k, a, m), []).append(_evaluate_video(pair_dts, pair_gts, ious, area, max_det))
    precision, recall = _accumulate(evals, len(cat_ids))
    t50, t75 = 0, 5
    stats = {
        "AP": _mean(precision[:, :, :, 0, 2]), "AP50": _mean(precision[t50, :, :, 0, 2]),
        "AP75": _mean(precision[t75, :, :, 0, 2]), "APs": _mean(precision[:, :, :, 1, 2]),
        "APm": _mean(precision[:, :, :, 2, 2]), "APl": _mean(precision[:, :, :, 3, 2]),
        "AR1": _mean(recall[:, :, 0, 0]), "AR10": _mean(recall[:, :, 0, 1]), "AR100": _mean(recall[:, :, 0, 2]),
    }
    out = {k: (v * 100 if v >= 0 else -1.0) for k, v in stats.items()}
    if verbose:
        print(format_metrics(out))
    return out


def format_metrics(metrics: dict[str, float]) -> str:
    return "  ".join(f"{k} {v:6.2f}" for k, v in metrics.items())
