"""Where per-frame mask features wait for VITA in keep mode: on the device up to a budget, then host memory
(pinned when the device is CUDA) up to a budget, then a memory-mapped file on disk, but only in a spill folder
that was asked for (otherwise exceeding the budgets raises `FeatureBudgetError`). Whole-video inference needs
the mask features of every frame after VITA has run once over all frame queries, so this store is what grows
with video length; recompute mode (`vita_deploy.pipeline.inference`) avoids it. Frame queries wait in a `QueryStore`.
"""
from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

_NUMPY_DTYPES = {torch.float32: np.float32, torch.float16: np.float16}


class FeatureBudgetError(ValueError):
    """Mask features exceed the device + host budget and no spill folder was given."""


def pinned_allocator(nbytes: int) -> torch.Tensor:
    """`nbytes` of page-locked host memory (uint8), for asynchronous host-to-device copies."""
    return torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)


def plain_allocator(nbytes: int) -> torch.Tensor:
    return torch.empty(nbytes, dtype=torch.uint8)


class HostPool:
    """Host memory for the feature store's host tier: a few large blocks, handed out as frame-aligned slices.

    Why: torch's pinned allocator rounds every request up to a power of two, so pinning each 18-frame r50 360p
    chunk (270 MiB) apart reserves 512 MiB for it: keep mode at T = 3,600 would pin ~98 GiB for ~52 GiB of
    features. Blocks of `block_bytes` (a power of two, so the allocator adds nothing) are filled frame by frame;
    a chunk that does not fit the current block continues in the next one. What is reserved beyond the features is
    less than one frame per block plus the unused tail of the last block.

    Args:
        allocator: nbytes -> uint8 tensor (`pinned_allocator` for CUDA; tests pass `plain_allocator`).
        block_bytes: block size; raised to the next power of two >= one frame when a frame is larger.
    """

    def __init__(self, allocator: Callable[[int], torch.Tensor] = plain_allocator,
                 block_bytes: int = 256 * 2**20) -> None:
        self.allocator = allocator
        self.block_bytes = block_bytes
        self.blocks: list[torch.Tensor] = []
        self._used = 0  # bytes used in the last block

    def take(self, frames: int, frame_shape: tuple[int, ...], dtype: torch.dtype) -> list[torch.Tensor]:
        """Uninitialised storage for `frames` frames of `frame_shape`: (k, *frame_shape) views in order, their k
        summing to `frames`, each inside one block (a frame never straddles two blocks)."""
        frame_bytes = math.prod(frame_shape) * torch.empty((), dtype=dtype).element_size()
        if frame_bytes > self.block_bytes:
            self.block_bytes = 1 << (frame_bytes - 1).bit_length()
        views, left = [], frames
        while left:
            if not self.blocks or self.block_bytes - self._used < frame_bytes:
                self.blocks.append(self.allocator(self.block_bytes))
                self._used = 0
            block = self.blocks[-1]
            k = min(left, (block.numel() - self._used) // frame_bytes)
            piece = block[self._used:self._used + k * frame_bytes].view(dtype).view(k, *frame_shape)
            views.append(piece)
            self._used += k * frame_bytes
            left -= k
        return views

    @property
    def reserved_bytes(self) -> int:
        return sum(b.numel() for b in self.blocks)

    def clear(self) -> None:
        self.blocks.clear()
        self._used = 0


class FeatureStore:
    """Append (n, C, h, w) chunks, read back frame ranges as tensors on `device`.

    Args:
        device: where the features are produced and consumed.
        device_budget_mb: features kept on `device` (ignored when `device` is the CPU).
        host_budget_mb: features kept in host memory beyond that (pinned when `device` is CUDA); None = no limit.
        spill_dir: folder for the disk tier (a temporary file, deleted by `close`); None: no disk tier.
        dtype: storage dtype; float16 halves the memory (features are upcast when read).
        host_allocator: allocator of the host tier's pool (`HostPool`); default pinned when `device` is CUDA.
    """

    def __init__(self, device: torch.device | str, device_budget_mb: float = 0.0, host_budget_mb: float | None = None,
                 spill_dir: str | Path | None = None, dtype: torch.dtype = torch.float32,
                 host_allocator: Callable[[int], torch.Tensor] | None = None) -> None:
        self.device = torch.device(device)
        self.dtype = dtype
        self.device_budget = device_budget_mb * 2**20 if self.device.type != "cpu" else 0.0
        self.host_budget = float("inf") if host_budget_mb is None else host_budget_mb * 2**20
        self.spill_dir = spill_dir
        if host_allocator is None:
            host_allocator = pinned_allocator if self.device.type == "cuda" else plain_allocator
        self.host_pool = HostPool(host_allocator)
        self._chunks: list[tuple[int, torch.Tensor | None]] = []  # (num frames, tensor or None when on disk)
        self._disk: np.memmap | None = None
        self._disk_path: str | None = None
        self._disk_frames = 0
        self._disk_index: list[int] = []  # for disk chunks: start frame in the memmap
        self.bytes_device = 0
        self.bytes_host = 0
        self.num_frames = 0

    def append(self, features: torch.Tensor) -> None:
        x = features.detach().to(self.dtype)
        nbytes = x.numel() * x.element_size()
        if self.bytes_device + nbytes <= self.device_budget:
            stored = x.to(self.device)
            self.bytes_device += nbytes
        elif self.bytes_host + nbytes <= self.host_budget:
            offset = 0
            for piece in self.host_pool.take(x.shape[0], tuple(x.shape[1:]), x.dtype):
                piece.copy_(x[offset:offset + piece.shape[0]], non_blocking=self.device.type == "cuda")
                self._chunks.append((piece.shape[0], piece))
                offset += piece.shape[0]
            self.bytes_host += nbytes
            self.num_frames += x.shape[0]
            return
        elif self.spill_dir is not None:
            self._spill(x)
            stored = None
        else:
            raise FeatureBudgetError(
                f"the mask features of {self.num_frames + x.shape[0]} frames exceed the feature budget (device "
                f"{self.device_budget / 2**20:g} MB + --host-budget-mb {self.host_budget / 2**20:g}): pass "
                "--features recompute|auto (flat memory, any length), a larger --host-budget-mb, or --spill-dir "
                "DIR for the rest on disk")
        self._chunks.append((x.shape[0], stored))
        self.num_frames += x.shape[0]

    def fits(self, nbytes: float) -> bool:
        """Whether `nbytes` of features in total fit the device + host budgets (the disk tier not counted)."""
        return nbytes <= self.device_budget + self.host_budget

    def fits_more(self, features: torch.Tensor) -> bool:
        """Whether appending `features` keeps the store within the device + host budgets."""
        nbytes = features.numel() * torch.empty((), dtype=self.dtype).element_size()
        return self.fits(self.bytes_device + self.bytes_host + self.bytes_disk + nbytes)

    def clear(self) -> None:
        """Drop every stored feature (memory and spill file); the store can be appended to again."""
        self.close()
        self._disk_frames, self._disk_index = 0, []
        self.bytes_device = self.bytes_host = self.num_frames = 0

    def _spill(self, x: torch.Tensor) -> None:
        n = x.shape[0]
        if self._disk is None or self._disk_frames + n > self._disk.shape[0]:
            self._grow_disk(x.shape[1:], self._disk_frames + max(n, 64))
        self._disk[self._disk_frames:self._disk_frames + n] = x.cpu().numpy()
        self._disk_index.append(self._disk_frames)
        self._disk_frames += n

    def _grow_disk(self, frame_shape: torch.Size, frames: int) -> None:
        capacity = max(frames, 2 * (self._disk.shape[0] if self._disk is not None else 0))
        if self._disk_path is None:
            fd, self._disk_path = tempfile.mkstemp(prefix="vita_mask_features_", suffix=".bin", dir=self.spill_dir)
            os.close(fd)
        if self._disk is not None:
            self._disk.flush()
        dtype = np.dtype(_NUMPY_DTYPES[self.dtype])
        os.truncate(self._disk_path, capacity * int(np.prod(frame_shape)) * dtype.itemsize)  # grow, keep data
        self._disk = np.memmap(self._disk_path, dtype=dtype, mode="r+", shape=(capacity, *frame_shape))

    def get(self, start: int, stop: int) -> torch.Tensor:
        """Frames [start, stop) as a float32 tensor on `device`."""
        parts, offset, disk_i = [], 0, 0
        for n, stored in self._chunks:
            lo, hi = max(start, offset), min(stop, offset + n)
            if lo < hi:
                if stored is not None:
                    parts.append(stored[lo - offset:hi - offset].to(self.device, non_blocking=True))
                else:
                    base = self._disk_index[disk_i] - offset
                    parts.append(torch.from_numpy(np.array(self._disk[base + lo:base + hi])).to(self.device))
            if stored is None:
                disk_i += 1
            offset += n
        return torch.cat(parts).float()

    @property
    def bytes_disk(self) -> int:
        return 0 if self._disk is None else self._disk_frames * int(np.prod(self._disk.shape[1:])) * self._disk.itemsize

    def close(self) -> None:
        self._chunks.clear()
        self.host_pool.clear()
        self._disk = None
        if self._disk_path and os.path.exists(self._disk_path):
            os.remove(self._disk_path)
        self._disk_path = None

    def __enter__(self) -> "FeatureStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class QueryStore:
    """Frame queries of the whole video for VITA: float32 on `device` up to `budget_mb`, then fp16 in host
    memory (pinned for CUDA); `all()` returns them as one float32 (T, fQ, C) tensor on `device`.
    Small (r50: 100 x 256 per frame) but linear in video length, so the tail is halved and kept off the GPU."""

    def __init__(self, device: torch.device | str, budget_mb: float = 256.0) -> None:
        self.device = torch.device(device)
        self.budget = budget_mb * 2**20
        self.bytes_full = 0
        self._chunks: list[torch.Tensor] = []

    def append(self, queries: torch.Tensor) -> None:
        x = queries.detach().float()
        nbytes = x.numel() * 4
        if self.bytes_full + nbytes <= self.budget:
            self._chunks.append(x.to(self.device))
            self.bytes_full += nbytes
        else:
            stored = torch.empty(x.shape, dtype=torch.float16, pin_memory=self.device.type == "cuda")
            stored.copy_(x, non_blocking=self.device.type == "cuda")
            self._chunks.append(stored)

    def all(self) -> torch.Tensor:
        return torch.cat([c.to(self.device, non_blocking=True).float() for c in self._chunks])

    def clear(self) -> None:
        self._chunks.clear()
        self.bytes_full = 0
