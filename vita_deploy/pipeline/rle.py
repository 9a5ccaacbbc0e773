"""COCO run-length encoding computed where the masks are (CPU or GPU): only run lengths leave the device.

COCO's RLE (pycocotools `maskApi.c` rleEncode) scans a mask in column-major (Fortran) order and stores the
lengths of alternating runs, starting with a run of zeros (length 0 when the first pixel is set). Here the run
boundaries are found with one vectorised comparison over all masks at once on their device, the run lengths are
differences of boundary positions (also on the device), and the host receives one int32 array of run lengths
plus one count per mask. The string compression of those counts is pycocotools' own (`frPyObjects` on the
uncompressed RLE), so the result is byte-identical to `pycocotools.mask.encode`.
"""
from __future__ import annotations

import numpy as np
import torch
from pycocotools import mask as mask_utils


def run_lengths(masks: torch.Tensor, column_major: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """bool (n, H, W) masks (or (n, W, H) when `column_major`, i.e. already transposed) -> COCO run lengths.

    Returns (runs, counts): int32 run lengths of all masks concatenated, and the number of runs of each mask
    (n,). The runs of mask i alternate zeros/ones starting with zeros and sum to H * W.
    """
    n = masks.shape[0]
    flat = (masks if column_major else masks.transpose(1, 2)).reshape(n, -1)
    length = flat.shape[1]
    # boundary[i, j]: pixel j differs from pixel j-1 (pixel -1 counts as 0); column `length` closes the last run.
    boundary = torch.ones(n, length + 1, dtype=torch.bool, device=masks.device)
    if length:
        boundary[:, 0] = flat[:, 0]
        torch.ne(flat[:, 1:], flat[:, :-1], out=boundary[:, 1:length])
    mask_id, pos = boundary.nonzero(as_tuple=True)  # row-major: sorted by mask, then position
    prev = torch.zeros_like(pos)
    prev[1:] = pos[:-1]
    first = torch.ones_like(mask_id, dtype=torch.bool)  # the first boundary of each mask: its run starts at 0
    first[1:] = mask_id[1:] != mask_id[:-1]
    prev[first] = 0
    runs = (pos - prev).to(torch.int32)
    counts = torch.bincount(mask_id, minlength=n)
    return runs.cpu().numpy(), counts.cpu().numpy()


def compress(runs: np.ndarray, counts: np.ndarray, height: int, width: int) -> list[dict]:
    """Uncompressed COCO runs -> compressed RLE dicts {"size": [H, W], "counts": str} (pycocotools' compression)."""
    if len(counts) == 0:
        return []
    splits = np.split(runs.astype(np.uint32), np.cumsum(counts)[:-1])
    rles = mask_utils.frPyObjects([{"size": [height, width], "counts": s} for s in splits], height, width)
    for rle in rles:
        rle["counts"] = rle["counts"].decode("utf-8")
    return rles


def encode(masks: torch.Tensor, column_major: bool = False, method: str = "auto") -> list[dict]:
    """bool (n, H, W) masks on any device (or (n, W, H) with `column_major`) -> n compressed COCO RLEs with
    utf-8 counts, equal to `pycocotools.mask.encode` of the same masks (an empty mask still gets its RLE).

    method: "torch" computes the run lengths with torch ops on the masks' device (only run lengths are copied
    to the host); "pycocotools" runs pycocotools' C encoder on host memory, without a copy when the masks are
    already column-major; "auto" (default) picks torch on accelerators and pycocotools on the CPU, where its
    single C scan is measured 4x faster than torch's `nonzero` (README, post-processing).
    """
    if method not in ("auto", "torch", "pycocotools"):
        raise ValueError(f"method must be auto, torch or pycocotools, not {method!r}")
    h, w = (masks.shape[2], masks.shape[1]) if column_major else masks.shape[1:]
    if method == "torch" or (method == "auto" and masks.device.type != "cpu"):
        return compress(*run_lengths(masks, column_major), int(h), int(w))
    cm = masks if column_major else masks.transpose(1, 2)
    arr = cm.detach().cpu().contiguous().numpy()  # (n, W, H) C order == (H, W, n) Fortran order
    rles = mask_utils.encode(arr.view(np.uint8).transpose(2, 1, 0))
    for rle in rles:
        rle["counts"] = rle["counts"].decode("utf-8")
    return rles
