"""YouTube-VIS ground-truth JSON (2019/2021/OVIS layouts): loading with clear errors, segmentation decoding.

Layout (ytvis_eval.md, "Ground-truth JSON"): `videos` (id, width, height, length, file_names), `categories`
(id, name), `annotations` (id, video_id, category_id, per-frame `segmentations`, optional per-frame `areas`
and `bboxes`, optional `iscrowd`). A per-frame segmentation is null (instance absent), polygons
`[[x0, y0, x1, y1, ...], ...]`, uncompressed RLE `{counts: [int, ...], size: [h, w]}` or compressed RLE
`{counts: str, size: [h, w]}`. Val/test files have no `annotations` or `annotations: null`.
"""
from __future__ import annotations

import json
from numbers import Real
from pathlib import Path

from pycocotools import mask as mask_utils

_FIX = "Fix the file (YouTube-VIS layout, see ytvis_eval.md) or regenerate it."


class YTVISFormatError(ValueError):
    """A malformed YouTube-VIS file; the message names the file, the entry, the field and the fix."""


def _fail(source: str, where: str, problem: str) -> YTVISFormatError:
    return YTVISFormatError(f"{source}: {where}: {problem}. {_FIX}")


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_number(x) -> bool:
    return isinstance(x, Real) and not isinstance(x, bool)


def segmentation_problem(segm, height: int, width: int) -> str | None:
    """What is wrong with one per-frame segmentation of an (height, width) video, or None when it is valid.

    Accepted: None, polygons (a list of flat [x, y, ...] lists, each with an even count >= 6), RLE dicts with
    `size == [height, width]` and `counts` a list of ints summing to height*width or a (byte) string."""
    if segm is None:
        return None
    if isinstance(segm, list):
        for j, poly in enumerate(segm):
            if not isinstance(poly, list) or len(poly) < 6 or len(poly) % 2 or not all(map(_is_number, poly)):
                return (f"polygon {j} must be a flat list [x0, y0, x1, y1, ...] of at least 3 points "
                        "(an even count >= 6 of numbers)")
        return None
    if not isinstance(segm, dict) or "counts" not in segm or "size" not in segm:
        return "must be null, a list of polygons or an RLE dict {counts, size}"
    size = segm["size"]
    if not isinstance(size, (list, tuple)) or len(size) != 2 or list(size) != [height, width]:
        return f"RLE 'size' {size} does not match the video's [height, width] = [{height}, {width}]"
    counts = segm["counts"]
    if isinstance(counts, list):
        if not all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in counts):
            return "uncompressed RLE 'counts' must be a list of non-negative ints"
        total = sum(counts)
        if total != height * width:
            return f"uncompressed RLE 'counts' sum to {total}, not height*width = {height * width}"
        return None
    if not isinstance(counts, (str, bytes)):
        return "RLE 'counts' must be a list of ints (uncompressed) or a string (compressed)"
    return compressed_counts_problem(counts, height * width)


def compressed_counts_problem(counts: str | bytes, total: int) -> str | None:
    """What is wrong with a compressed (COCO LEB128-style) RLE string for a mask of `total` pixels, or None.

    Decoded here in Python before pycocotools sees it: pycocotools' decoder does not check the characters or
    the run lengths, so a garbage string can make it allocate and loop for minutes."""
    if isinstance(counts, bytes):
        try:
            counts = counts.decode("ascii")
        except UnicodeDecodeError:
            return "compressed RLE 'counts' must be ASCII"
    if len(counts) > 8 * total + 16:
        return f"compressed RLE 'counts' is {len(counts)} characters, too long for a {total}-pixel mask"
    cnts: list[int] = []
    pos, n, seen = 0, len(counts), 0
    while pos < n:
        value, shift, more = 0, 0, True
        while more:
            if pos >= n:
                return "compressed RLE 'counts' ends in the middle of a number (truncated)"
            c = ord(counts[pos]) - 48
            if not 0 <= c < 64:
                return f"compressed RLE 'counts' has the character {counts[pos]!r} at {pos} (allowed: '0'..'o')"
            value |= (c & 0x1F) << (5 * shift)
            more = bool(c & 0x20)
            pos += 1
            shift += 1
            if not more and (c & 0x10):
                value |= -1 << (5 * shift)
        if len(cnts) > 2:  # pycocotools' rleFrString: runs after the second are deltas to the run two back
            value += cnts[-2]
        if value < 0:
            return f"compressed RLE 'counts' decodes to a negative run length ({value}) at run {len(cnts)}"
        seen += value
        if seen > total:
            return f"compressed RLE 'counts' run lengths exceed the mask's {total} pixels"
        cnts.append(value)
    if seen != total:
        return f"compressed RLE 'counts' run lengths sum to {seen}, not height*width = {total}"
    return None


def _check_video(name: str, i: int, v) -> None:
    if not isinstance(v, dict):
        raise _fail(name, f"videos[{i}]", "not an object")
    for key in ("id", "width", "height", "file_names"):
        if key not in v:
            raise _fail(name, f"videos[{i}]", f"missing '{key}'")
    where = f"videos[{i}] (id {v['id']})"
    if not _is_int(v["id"]):
        raise _fail(name, f"videos[{i}]", f"'id' must be an int, found {v['id']!r}")
    for key in ("width", "height"):
        if not _is_int(v[key]) or v[key] <= 0:
            raise _fail(name, where, f"'{key}' must be a positive int, found {v[key]!r}")
    if not isinstance(v["file_names"], list) or not v["file_names"]:
        raise _fail(name, where, "'file_names' must be a non-empty list of frame paths")
    if v.get("length") is None:
        v["length"] = len(v["file_names"])  # some files omit it
    elif not _is_int(v["length"]) or v["length"] != len(v["file_names"]):
        raise _fail(name, where, f"'length' {v['length']!r} != {len(v['file_names'])} file_names")


def _check_annotation(name: str, i: int, a, videos: dict[int, dict], categories: set[int]) -> None:
    where = f"annotations[{i}]"
    if not isinstance(a, dict):
        raise _fail(name, where, "not an object")
    for key in ("id", "video_id", "category_id", "segmentations"):
        if key not in a:
            raise _fail(name, where, f"missing '{key}'")
    where = f"annotations[{i}] (id {a['id']})"
    if a["video_id"] not in videos:
        raise _fail(name, where, f"'video_id' {a['video_id']!r} is not among the videos")
    if a["category_id"] not in categories:
        raise _fail(name, where, f"'category_id' {a['category_id']!r} is not among the categories")
    video = videos[a["video_id"]]
    length = video["length"]
    for field in ("segmentations", "areas", "bboxes"):
        if field == "segmentations" or a.get(field) is not None:
            if not isinstance(a[field], list) or len(a[field]) != length:
                found = len(a[field]) if isinstance(a[field], list) else type(a[field]).__name__
                raise _fail(name, where, f"'{field}' must be a list of {length} entries (one per frame of video "
                                         f"{a['video_id']}, null where the instance is absent), found {found}")
    for t, segm in enumerate(a["segmentations"]):
        problem = segmentation_problem(segm, video["height"], video["width"])
        if problem:
            raise _fail(name, f"{where} segmentations[{t}]", problem)
    for t, area in enumerate(a.get("areas") or []):
        if area is not None and (not _is_number(area) or area < 0):
            raise _fail(name, f"{where} areas[{t}]", f"must be a non-negative number or null, found {area!r}")
    for t, bbox in enumerate(a.get("bboxes") or []):
        if bbox is not None and (not isinstance(bbox, list) or len(bbox) != 4 or not all(map(_is_number, bbox))):
            raise _fail(name, f"{where} bboxes[{t}]", f"must be [x, y, w, h] or null, found {bbox!r}")
    if a.get("iscrowd") not in (None, 0, 1, True, False):
        raise _fail(name, where, f"'iscrowd' must be 0 or 1, found {a['iscrowd']!r}")


def load_ytvis_json(source: str | Path | dict) -> dict:
    """Read and validate a YouTube-VIS ground-truth file (or an already parsed dict).

    Returns the dict with `annotations` a list ([] for val/test files) and every video's `length` filled in
    (from `file_names` when absent). Raises YTVISFormatError naming the file, the entry, the field and the fix."""
    name = "<dict>"
    if isinstance(source, dict):
        data = dict(source)  # shallow copy: the top-level keys we normalise are not written back
    else:
        name = str(source)
        path = Path(source)
        if not path.is_file():
            raise YTVISFormatError(f"{path} does not exist: pass the annotation JSON (e.g. train.json or "
                                   "valid/instances.json)")
        try:
            data = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise YTVISFormatError(f"{path} is not valid JSON ({e}); the file is truncated or corrupt: "
                                   "download or regenerate it") from None
    if not isinstance(data, dict):
        raise _fail(name, "top level", f"expected an object with videos/categories/annotations, "
                                       f"found {type(data).__name__}")
    for key in ("videos", "categories"):
        if not isinstance(data.get(key), list):
            raise _fail(name, "top level", f"missing or non-list '{key}'")
    videos: dict[int, dict] = {}
    for i, v in enumerate(data["videos"]):
        _check_video(name, i, v)
        if v["id"] in videos:
            raise _fail(name, f"videos[{i}]", f"duplicate video 'id' {v['id']}")
        videos[v["id"]] = v
    categories: set[int] = set()
    for i, c in enumerate(data["categories"]):
        if not isinstance(c, dict) or not _is_int(c.get("id")) or not isinstance(c.get("name"), str):
            raise _fail(name, f"categories[{i}]", "needs an int 'id' and a string 'name'")
        if c["id"] in categories:
            raise _fail(name, f"categories[{i}]", f"duplicate category 'id' {c['id']}")
        categories.add(c["id"])
    anns = data.get("annotations")
    if anns is None:
        anns = []  # val/test layout
    if not isinstance(anns, list):
        raise _fail(name, "top level", "'annotations' must be a list or null")
    for i, a in enumerate(anns):
        _check_annotation(name, i, a, videos, categories)
    data["annotations"] = anns
    return data


def segmentation_to_rle(segm, height: int, width: int) -> dict | None:
    """One per-frame segmentation (polygons, uncompressed or compressed RLE) -> compressed RLE with bytes
    `counts`, as pycocotools.mask expects. None (and an empty polygon list, which the reference also treats
    as "absent") gives None. Raises YTVISFormatError on anything else."""
    if segm is None or (isinstance(segm, list) and not segm):
        return None
    problem = segmentation_problem(segm, height, width)
    if problem:
        raise YTVISFormatError(f"segmentation {str(segm)[:60]}: {problem}")
    if isinstance(segm, list):  # polygons: one RLE per part, merged into one mask
        return mask_utils.merge(mask_utils.frPyObjects(segm, height, width))
    counts = segm["counts"]
    if isinstance(counts, list):  # uncompressed RLE
        return mask_utils.frPyObjects(segm, height, width)
    return {"size": [height, width], "counts": counts.encode("utf-8") if isinstance(counts, str) else counts}


def category_mapping(dataset: dict) -> tuple[list[int], dict[int, int]]:
    """(sorted dataset category ids, i.e. contiguous index i -> dataset id, {dataset id: contiguous index})."""
    ids = sorted(c["id"] for c in dataset["categories"])
    return ids, {cid: i for i, cid in enumerate(ids)}


def check_dataset(root: str | Path) -> list[str]:
    """Check a YouTube-VIS folder for training: `train.json` (and `valid.json` when present) valid, and every
    frame they list present under `<split>/JPEGImages/`; returns one summary line per split. Raises
    YTVISFormatError naming the file and the first problem."""
    root = Path(root)
    if not (root / "train.json").is_file():
        raise YTVISFormatError(f"{root / 'train.json'} does not exist: a training folder holds train.json and "
                               "train/JPEGImages/<video>/<frame>.jpg (YouTube-VIS 2019 layout)")
    lines = []
    for split in ("train", "valid"):
        path = root / f"{split}.json"
        if not path.is_file():
            continue
        data = load_ytvis_json(path)
        frames = root / split / "JPEGImages"
        listed = [f for v in data["videos"] for f in v["file_names"]]
        missing = [f for f in listed if not (frames / f).is_file()]
        if missing:
            raise YTVISFormatError(f"{len(missing)} of the {len(listed)} frames {path} lists are missing under "
                                   f"{frames}, e.g. {frames / missing[0]}: copy the frames there or fix file_names")
        names = ", ".join(c["name"] for c in sorted(data["categories"], key=lambda c: c["id"]))
        lines.append(f"{path}: {len(data['videos'])} videos, {len(listed)} frames, {len(data['annotations'])} "
                     f"instances, {len(data['categories'])} categories ({names})")
    return lines
