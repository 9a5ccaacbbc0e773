"""Masks, mask scores and RLEs of the top-k instances for a chunk of frames, all on the features' device.

VITA's masks are `einsum("qc,tchw->qthw", mask_embed, mask_features)` at stride 4, bilinearly upsampled to the
padded input size, cropped to the resized frame (where the mask score is measured: mean sigmoid inside the
hard mask), then upsampled again to the original frame and thresholded at 0 (vita_spec.md section 3.5).
Bilinear resizing is linear and separable, so each of those resizes is a small matrix per axis; this module
composes them once per video (rows of `F.interpolate`'s own weights) and applies them as two batched matmuls:

    score logits (k, t, h, w)  = S_h @ L @ S_w^T            (S = crop o upsample-to-padded)
    mask logits^T (k, t, W, H) = O_w @ L^T @ O_h^T          (O = upsample-to-original o S)

The transposed product is the column-major layout COCO's RLE scans, so the masks go to `vita_deploy.pipeline.rle`
without a transpose. Chunks are cut so that no temporary exceeds `max_chunk_mb` (1080p stays bounded).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from vita_deploy.pipeline import rle


def resize_matrix(n_in: int, n_out: int) -> torch.Tensor:
    """float64 (n_out, n_in): the 1-D weights of `F.interpolate(mode="bilinear", align_corners=False)`."""
    eye = torch.eye(n_in, dtype=torch.float64)[None]  # (1, n_in channels, n_in samples)
    return F.interpolate(eye, size=n_out, mode="linear", align_corners=False)[0].T.contiguous()


@dataclass
class ChunkResult:
    """Per instance: sum of soft mask values inside the hard mask and hard-mask area over the chunk's frames
    (k,), and the chunk's RLEs (k lists of t dicts)."""

    numerator: torch.Tensor
    denominator: torch.Tensor
    rles: list[list[dict]]


def _support(matrix: torch.Tensor) -> list[tuple[int, int]]:
    """For each input index j of a (n_out, n_in) resize matrix: the output rows [lo, hi) with a nonzero weight."""
    out = []
    for column in matrix.T:
        nz = column.nonzero().flatten()
        out.append((int(nz[0]), int(nz[-1]) + 1) if len(nz) else (0, 0))
    return out


class MaskMaker:
    """Turns (k, C) mask embeddings and (t, C, h4, w4) mask features into mask-score sums and per-frame RLEs.

    Bilinear weights are non-negative and sum to 1, so an upsampled logit is positive only next to a positive
    stride-4 logit: per instance and chunk, only the window that the positive stride-4 logits reach is upsampled
    (the rest of the frame is known to be empty, and contributes nothing to the mask score), and frames without
    a positive logit get the empty RLE without being scanned.

    Args:
        feature_hw: (h4, w4) mask-feature size; padded_hw: the padded input size (4x the features);
        size_hw: the resized frame inside the padding; orig_hw: the original frame (output resolution).
    """

    def __init__(self, feature_hw: tuple[int, int], padded_hw: tuple[int, int], size_hw: tuple[int, int],
                 orig_hw: tuple[int, int], device: torch.device | str = "cpu", rle_method: str = "auto") -> None:
        self.device = torch.device(device)
        self.orig_hw = orig_hw
        self.rle_method = rle_method
        mats = []
        for axis in (0, 1):
            s = resize_matrix(feature_hw[axis], padded_hw[axis])[:size_hw[axis]]  # (h, h4)
            o = resize_matrix(size_hw[axis], orig_hw[axis]) @ s  # (H, h4)
            mats += [s, o]
        self.support = [_support(m) for m in mats]  # s_h, o_h, s_w, o_w: input index -> output rows
        # Input indices that reach some output row: a stride-4 row of the padding below the resized frame (or one
        # that a downsampling resize skips) reaches none, and its logits, positive or not, contribute nothing.
        self.reaches = [torch.tensor([hi > lo for lo, hi in sup]) for sup in self.support]
        self.taps = [_support(m.T) for m in mats]  # output row -> input indices with a nonzero weight
        self.s_h, self.o_h, self.s_w, self.o_w = (m.float().to(self.device) for m in mats)
        self.empty_rle = rle.encode(torch.zeros(1, *orig_hw, dtype=torch.bool), method="pycocotools")[0]

    def _window(self, which: int, positive: torch.Tensor) -> tuple[slice, slice] | None:
        """The output rows that the positive input indices (bool (n_in,)) reach through matrix `which`, and the
        input indices those rows read (the window's own taps, negative logits included); None when no positive
        index reaches an output row (then every output of that axis is <= 0).

        Supports move monotonically with the index, so the rows reached by the first and the last positive index
        that reach any row bound every row reached."""
        idx = (positive & self.reaches[which]).nonzero().flatten()
        if not len(idx):
            return None
        out_lo, out_hi = self.support[which][int(idx[0])][0], self.support[which][int(idx[-1])][1]
        return slice(out_lo, out_hi), slice(self.taps[which][out_lo][0], self.taps[which][out_hi - 1][1])

    def __call__(self, embed: torch.Tensor, features: torch.Tensor) -> ChunkResult:
        """embed (k, C) float32, features (t, C, h4, w4) float32 on the device -> ChunkResult."""
        k, t = embed.shape[0], features.shape[0]
        height, width = self.orig_hw
        logits = torch.einsum("qc,tchw->qthw", embed, features)  # (k, t, h4, w4)
        positive = logits > 0
        rows = positive.any(3).any(1).cpu()  # (k, h4): stride-4 rows with a positive logit in some frame
        cols = positive.any(2).any(1).cpu()  # (k, w4)
        numerator = torch.zeros(k, device=self.device)
        denominator = torch.zeros(k, device=self.device)
        rles: list[list[dict]] = [[self.empty_rle] * t for _ in range(k)]
        for q in range(k):
            lq = logits[q]  # (t, h4, w4)
            # mask score at the resized frame: mean sigmoid inside the hard mask
            score_rows, score_cols = self._window(0, rows[q]), self._window(2, cols[q])
            if score_rows is not None and score_cols is not None:
                (rows_out, rows_in), (cols_out, cols_in) = score_rows, score_cols
                soft = torch.matmul(torch.matmul(self.s_h[rows_out, rows_in], lq[:, rows_in, cols_in]),
                                    self.s_w[cols_out, cols_in].T).sigmoid_()
                hard = soft > 0.5
                denominator[q] = hard.sum()
                numerator[q] = soft.mul_(hard).sum()
            # masks at the original frame, column-major (t, W, H) inside the window
            mask_rows, mask_cols = self._window(1, rows[q]), self._window(3, cols[q])
            if mask_rows is None or mask_cols is None:
                continue
            (rows_out, rows_in), (cols_out, cols_in) = mask_rows, mask_cols
            window = torch.matmul(torch.matmul(self.o_w[cols_out, cols_in], lq[:, rows_in, cols_in].transpose(1, 2)),
                                  self.o_h[rows_out, rows_in].T) > 0
            frames = window.flatten(1).any(1).nonzero().flatten().tolist()
            if not frames:
                continue
            canvas = torch.zeros(len(frames), width, height, dtype=torch.bool, device=self.device)
            canvas[:, cols_out, rows_out] = window[frames]
            for f, encoded in zip(frames, rle.encode(canvas, column_major=True, method=self.rle_method)):
                rles[q][f] = encoded
        return ChunkResult(numerator, denominator, rles)
