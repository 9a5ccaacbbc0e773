"""YouTube-VIS ground-truth JSON (2019/2021/OVIS layouts): loading with clear errors, segmentation decoding.

Layout (ytvis_eval.md, "Ground-truth JSON"): `videos` (id, width, height, length, file_names),
`categories` (id, name), `annotations` (id, video_id, category_id, per-frame `segmentations` as polygons,
uncompressed RLE, compressed RLE or null; optional `areas`, `bboxes`, `iscrowd`). Val/test files have no
annotations or `annotations: null`.
"""
from __future__ import annotations

import json
from pathlib import Path

from pycocotools import mask as mask_utils


class YTVISFormatError(ValueError):
    """A malformed YouTube-VIS file; the message names the file, the entry and the field."""


def _fail(source: str, where: str, problem: str) -> YTVISFormatError:
    return YTVISFormatError(f"{source}: {where}: {problem}. Fix the file (YouTube-VIS layout: videos, categories, "
                            "annotations with per-frame segmentations) or regenerate it.")


def load_ytvis_json(source: str | Path | dict) -> dict:
    """Read and validate a YouTube-VIS ground-truth file; returns the dict with `annotations` a list ([] for
    val/test files) and every video's `length` filled in."""
    name = "<dict>"
    if not isinstance(source, dict):
        name = str(source)
        path = Path(source)
        if not path.is_file():
            raise YTVISFormatError(f"{path} does not exist: pass the annotation JSON (e.g. train.json)")
        try:
            data = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise YTVISFormatError(f"{path} is not valid JSON ({e}); the file is truncated or corrupt") from None
    else:
        data = dict(source)
    if not isinstance(data, dict):
        raise _fail(name, "top level", f"expected an object, found {type(data).__name__}")
    for key in ("videos", "categories"):
        if not isinstance(data.get(key), list):
            raise _fail(name, "top level", f"missing or non-list '{key}'")
    videos: dict[int, dict] = {}
    for i, v in enumerate(data["videos"]):
        if not isinstance(v, dict):
            raise _fail(name, f"videos[{i}]", "not an object")
        for key in ("id", "width", "height", "file_names"):
            if key not in v:
                raise _fail(name, f"videos[{i}]", f"missing '{key}'")
        if not isinstance(v["file_names"], list) or not v["file_names"]:
            raise _fail(name, f"videos[{i}] (id {v['id']})", "'file_names' must be a non-empty list")
        if v.get("length") is None:
            v["length"] = len(v["file_names"])
        elif v["length"] != len(v["file_names"]):
            raise _fail(name, f"videos[{i}] (id {v['id']})",
                        f"'length' {v['length']} != {len(v['file_names'])} file_names")
        if v["id"] in videos:
            raise _fail(name, f"videos[{i}]", f"duplicate video id {v['id']}")
        videos[v["id"]] = v
    categories = set()
    for i, c in enumerate(data["categories"]):
        if not isinstance(c, dict) or "id" not in c or "name" not in c:
            raise _fail(name, f"categories[{i}]", "needs 'id' and 'name'")
        categories.add(c["id"])
    anns = data.get("annotations")
    if anns is None:
        anns = []
    if not isinstance(anns, list):
        raise _fail(name, "top level", "'annotations' must be a list or null")
    for i, a in enumerate(anns):
        where = f"annotations[{i}]"
        if not isinstance(a, dict):
            raise _fail(name, where, "not an object")
        for key in ("id", "video_id", "category_id", "segmentations"):
            if key not in a:
                raise _fail(name, where, f"missing '{key}'")
        where = f"annotations[{i}] (id {a['id']})"
        if a["video_id"] not in videos:
            raise _fail(name, where, f"'video_id' {a['video_id']} is not among the videos")
        if a["category_id"] not in categories:
            raise _fail(name, where, f"'category_id' {a['category_id']} is not among the categories")
        length = videos[a["video_id"]]["length"]
        for field in ("segmentations", "areas", "bboxes"):
            if field in a and (not isinstance(a[field], list) or len(a[field]) != length):
                raise _fail(name, where, f"'{field}' must be a list of {length} entries (one per frame, null "
                                         "where the instance is absent)")
        for t, segm in enumerate(a["segmentations"]):
            if segm is not None and not (isinstance(segm, list) or (isinstance(segm, dict) and "counts" in segm
                                                                    and "size" in segm)):
                raise _fail(name, f"{where} segmentations[{t}]", "must be null, polygons or an RLE {counts, size}")
    data["annotations"] = anns
    return data


def segmentation_to_rle(segm, height: int, width: int) -> dict | None:
    """Polygons, uncompressed RLE or compressed RLE -> compressed RLE (bytes counts); None stays None."""
    if segm is None:
        return None
    if isinstance(segm, list):  # polygons
        return mask_utils.merge(mask_utils.frPyObjects(segm, height, width))
    if isinstance(segm["counts"], list):  # uncompressed RLE
        return mask_utils.frPyObjects(segm, *segm["size"])
    counts = segm["counts"]
    return {"size": list(segm["size"]), "counts": counts.encode("utf-8") if isinstance(counts, str) else counts}


def category_mapping(dataset: dict) -> tuple[list[int], dict[int, int]]:
    """(sorted dataset category ids: contiguous index -> id, {dataset id: contiguous index})."""
    ids = sorted(c["id"] for c in dataset["categories"])
    return ids, {cid: i for i, cid in enumerate(ids)}
