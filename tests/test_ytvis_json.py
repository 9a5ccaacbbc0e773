"""YouTube-VIS ground-truth loader: named errors for malformed files, segmentation conversion, category ids."""
from __future__ import annotations

import copy
import json

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from vita_deploy.data.ytvis_json import YTVISFormatError, category_mapping, load_ytvis_json, segmentation_to_rle

H, W = 10, 12


def box(y0, y1, x0, x1, h=H, w=W) -> np.ndarray:
    m = np.zeros((h, w), bool)
    m[y0:y1, x0:x1] = True
    return m


def compressed(m: np.ndarray) -> dict:
    r = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
    return {"size": r["size"], "counts": r["counts"].decode()}


def uncompressed(m: np.ndarray) -> dict:
    """Column-major run lengths starting with a run of zeros, as in the YouTube-VIS train files."""
    flat = m.T.reshape(-1).astype(np.int8)  # column-major, (H*W,)
    edges = np.flatnonzero(np.diff(flat)) + 1
    runs = np.diff(np.concatenate([[0], edges, [flat.size]])).tolist()
    return {"size": list(m.shape), "counts": ([0] + runs) if flat[0] else runs}


def dataset() -> dict:
    m = box(2, 6, 2, 8)
    return {
        "info": {}, "licenses": [],
        "videos": [{"id": 1, "width": W, "height": H, "length": 2, "file_names": ["a/0.jpg", "a/5.jpg"]},
                   {"id": 2, "width": W, "height": H, "file_names": ["b/0.jpg", "b/5.jpg", "b/10.jpg"]}],
        "categories": [{"id": 7, "name": "cat"}, {"id": 1, "name": "person"}, {"id": 3, "name": "dog"}],
        "annotations": [{"id": 1, "video_id": 1, "category_id": 7, "iscrowd": 0,
                         "segmentations": [uncompressed(m), None], "areas": [24, None],
                         "bboxes": [[2, 2, 6, 4], None]},
                        {"id": 2, "video_id": 2, "category_id": 3, "iscrowd": 0,
                         "segmentations": [compressed(m), [[2, 2, 8, 2, 8, 6, 2, 6]], None]}],
    }


def test_valid_file_loads_and_length_is_derived(tmp_path):
    path = tmp_path / "train.json"
    path.write_text(json.dumps(dataset()))
    data = load_ytvis_json(path)
    assert [v["length"] for v in data["videos"]] == [2, 3]  # video 2 has no 'length': 3 file_names
    assert len(data["annotations"]) == 2


@pytest.mark.parametrize("annotations", [None, "missing"])
def test_val_files_without_annotations(annotations):
    data = dataset()
    if annotations == "missing":
        del data["annotations"]
    else:
        data["annotations"] = None
    assert load_ytvis_json(data)["annotations"] == []
    assert data.get("annotations") is None  # the caller's dict keeps its top level


MALFORMED = [  # (mutation, a word the message must contain)
    (lambda d: d.pop("videos"), "videos"),
    (lambda d: d.update(categories={"id": 1}), "categories"),
    (lambda d: d.update(annotations={"id": 1}), "annotations"),
    (lambda d: d["videos"][0].pop("height"), "height"),
    (lambda d: d["videos"][0].update(width=-4), "width"),
    (lambda d: d["videos"][0].update(file_names=[]), "file_names"),
    (lambda d: d["videos"][0].update(length=5), "length"),
    (lambda d: d["videos"][1].update(id=1), "duplicate video"),
    (lambda d: d["categories"][0].pop("name"), "name"),
    (lambda d: d["annotations"][0].pop("video_id"), "video_id"),
    (lambda d: d["annotations"][0].update(video_id=99), "video_id"),
    (lambda d: d["annotations"][0].update(category_id=2), "category_id"),
    (lambda d: d["annotations"][0]["segmentations"].pop(), "segmentations"),
    (lambda d: d["annotations"][0].update(areas=[24]), "areas"),
    (lambda d: d["annotations"][0]["areas"].__setitem__(0, "big"), "areas"),
    (lambda d: d["annotations"][0]["bboxes"].__setitem__(0, [1, 2, 3]), "bboxes"),
    (lambda d: d["annotations"][0].update(iscrowd=2), "iscrowd"),
    (lambda d: d["annotations"][0]["segmentations"][0].update(size=[5, 5]), "size"),
    (lambda d: d["annotations"][0]["segmentations"][0]["counts"].append(3), "counts"),
    (lambda d: d["annotations"][1]["segmentations"].__setitem__(1, [[1, 2, 3, 4]]), "polygon"),
    (lambda d: d["annotations"][1]["segmentations"].__setitem__(2, "mask"), "segmentations[2]"),
]


@pytest.mark.parametrize("mutate,field", MALFORMED)
def test_malformed_files_name_the_problem(tmp_path, mutate, field):
    data = dataset()
    mutate(data)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(YTVISFormatError) as err:
        load_ytvis_json(path)
    assert field in str(err.value) and "bad.json" in str(err.value)


def test_error_names_the_annotation():
    data = dataset()
    data["annotations"][1]["category_id"] = 40
    with pytest.raises(YTVISFormatError, match=r"annotations\[1\] \(id 2\): 'category_id' 40"):
        load_ytvis_json(data)


def test_unreadable_files(tmp_path):
    with pytest.raises(YTVISFormatError, match="does not exist"):
        load_ytvis_json(tmp_path / "nowhere.json")
    truncated = tmp_path / "truncated.json"
    truncated.write_text(json.dumps(dataset())[:50])
    with pytest.raises(YTVISFormatError, match="not valid JSON"):
        load_ytvis_json(truncated)
    top_list = tmp_path / "list.json"
    top_list.write_text("[]")
    with pytest.raises(YTVISFormatError, match="expected an object"):
        load_ytvis_json(top_list)


def test_all_segmentation_forms_decode_to_the_same_mask():
    # Rectangle polygon with corners (x, y) = (2, 2) and (8, 6): pycocotools fills rows 2..5, columns 2..7,
    # i.e. 4 x 6 = 24 pixels, the same as box(2, 6, 2, 8).
    m = box(2, 6, 2, 8)
    forms = {
        "polygon": [[2.0, 2.0, 8.0, 2.0, 8.0, 6.0, 2.0, 6.0]],
        "uncompressed": uncompressed(m),
        "compressed str": compressed(m),
        "compressed bytes": mask_utils.encode(np.asfortranarray(m.astype(np.uint8))),
    }
    for name, segm in forms.items():
        rle = segmentation_to_rle(copy.deepcopy(segm), H, W)
        assert isinstance(rle["counts"], bytes), name
        np.testing.assert_array_equal(mask_utils.decode(rle).astype(bool), m, err_msg=name)
        assert int(mask_utils.area(rle)) == 24, name


def test_uncompressed_rle_starting_with_foreground():
    # Pixel (0, 0) set: column-major counts start with a zero-length background run: [0, 1, 119].
    m = box(0, 1, 0, 1)
    assert uncompressed(m)["counts"] == [0, 1, H * W - 1]
    np.testing.assert_array_equal(mask_utils.decode(segmentation_to_rle(uncompressed(m), H, W)).astype(bool), m)


def test_multi_part_polygon_is_merged():
    # Parts (0,0)-(4,3) and (6,6)-(9,9): 3 x 4 + 3 x 3 = 21 pixels.
    rle = segmentation_to_rle([[0, 0, 4, 0, 4, 3, 0, 3], [6, 6, 9, 6, 9, 9, 6, 9]], H, W)
    np.testing.assert_array_equal(mask_utils.decode(rle).astype(bool), box(0, 3, 0, 4) | box(6, 9, 6, 9))
    assert int(mask_utils.area(rle)) == 21


def test_absent_frames_and_bad_segmentations():
    assert segmentation_to_rle(None, H, W) is None
    assert segmentation_to_rle([], H, W) is None  # an empty polygon list is "absent", as in the reference
    with pytest.raises(YTVISFormatError, match="size"):
        segmentation_to_rle(compressed(box(0, 2, 0, 2)), H + 1, W)
    with pytest.raises(YTVISFormatError, match="RLE dict"):
        segmentation_to_rle({"counts": "abc"}, H, W)


def test_category_mapping_is_sorted_dataset_ids():
    ids, index = category_mapping(dataset())
    assert ids == [1, 3, 7] and index == {1: 0, 3: 1, 7: 2}
