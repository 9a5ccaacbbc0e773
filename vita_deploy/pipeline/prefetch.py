"""Decoding and resizing in a background thread, a bounded queue of ready chunks in front of the graphs.

`FrameChunks` turns a stream of uint8 RGB frames into chunks of resized frames, uint8 (n, 3, h, w) tensors
(pinned when the consumer is a CUDA device, so host-to-device copies are asynchronous), each tagged with the
index of its first frame. With `background=True` a daemon thread decodes ahead of the consumer, at most `depth`
chunks ahead (memory stays bounded); with `background=False` the same function runs inline, so both orders give
the same tensors. A frame that cannot be decoded or has another size raises `FrameReadError` naming its index
in the consumer (the thread never blocks on a full queue once the consumer has stopped, so nothing hangs).

Why OpenCV decodes here (not PyAV): see README "Streaming pipeline".
"""
from __future__ import annotations

import os
import queue
import stat
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from vita_deploy.config import InputConfig
from vita_deploy.pipeline.preprocess import resize_frame, shortest_edge_size
from vita_deploy.pipeline.video_io import VideoReadError


class FrameReadError(VideoReadError):
    """A frame in the middle of a video could not be read (its index is in the message)."""


@dataclass
class Chunk:
    """Frames [start, start + n) resized: uint8 (n, 3, h, w); `orig` the source (H, W), `size` the resized (h, w);
    `frames` the source frames themselves (uint8 (H, W, 3) RGB) when the reader was asked to keep them."""

    start: int
    images: torch.Tensor
    orig: tuple[int, int]
    size: tuple[int, int]
    frames: list[np.ndarray] | None = None


@dataclass
class ReadStats:
    """Seconds spent decoding and resizing (in the background thread when there is one) and, with a thread,
    seconds the consumer waited for it (the part of reading not hidden behind compute)."""

    decode: float = 0.0
    resize: float = 0.0
    wait: float = 0.0
    frames: int = 0


def is_rereadable(frames: Iterable) -> bool:
    """True when iterating `frames` again yields the video again: a list, a VideoSource of a file or folder.
    False for an iterator/generator and for a source read from a pipe, FIFO or character device (stdin)."""
    try:
        if iter(frames) is frames:
            return False
    except TypeError:
        return False
    path = getattr(frames, "path", None)
    if path is not None:
        if str(path) in ("-", "/dev/stdin"):
            return False
        try:
            mode = os.stat(Path(path)).st_mode
        except OSError:
            return False
        return stat.S_ISREG(mode) or stat.S_ISDIR(mode)
    return True


def _chunks(frames: Iterable[np.ndarray], chunk_size: int, inp: InputConfig, pin: bool,
            stats: ReadStats, keep_frames: bool = False) -> Iterator[Chunk]:
    """The work itself (same in the thread and inline): decode, check size, resize, stack."""
    it = iter(frames)
    index, orig, size, batch = 0, None, None, []
    sources: list[np.ndarray] | None = [] if keep_frames else None
    while True:
        t0 = time.perf_counter()
        try:
            frame = next(it)
        except StopIteration:
            break
        except VideoReadError as e:  # video_io's own errors already name the frame and the fix
            raise FrameReadError(str(e)) from e
        except Exception as e:  # noqa: BLE001 - any other decoder failure becomes an error naming the frame
            raise FrameReadError(f"frame {index} of the video could not be read: {e}") from e
        t1 = time.perf_counter()
        stats.decode += t1 - t0
        if not isinstance(frame, np.ndarray) or frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
            raise FrameReadError(f"frame {index} of the video is not a uint8 (H, W, 3) RGB image "
                                 f"(got {getattr(frame, 'shape', type(frame))}, {getattr(frame, 'dtype', '')})")
        if orig is None:
            orig = frame.shape[:2]
            size = shortest_edge_size(*orig, inp.min_size_test, inp.max_size_test)
        elif frame.shape[:2] != orig:
            raise FrameReadError(f"frame {index} is {frame.shape[1]}x{frame.shape[0]} but the video started at "
                                 f"{orig[1]}x{orig[0]}: all frames of a video must have the same size")
        batch.append(resize_frame(frame, size))
        if sources is not None:
            sources.append(frame)
        index += 1
        if len(batch) == chunk_size:
            chunk = _stack(index - len(batch), batch, orig, size, pin, sources)
            batch, sources = [], ([] if keep_frames else None)
            stats.resize += time.perf_counter() - t1
            yield chunk
        else:
            stats.resize += time.perf_counter() - t1
    stats.frames = index
    if batch:
        t1 = time.perf_counter()
        chunk = _stack(index - len(batch), batch, orig, size, pin, sources)
        stats.resize += time.perf_counter() - t1
        yield chunk


def _stack(start: int, batch: list[np.ndarray], orig, size, pin: bool, sources: list[np.ndarray] | None) -> Chunk:
    images = torch.from_numpy(np.stack(batch)).permute(0, 3, 1, 2).contiguous()
    if pin:
        images = images.pin_memory()
    return Chunk(start, images, tuple(orig), tuple(size), sources)


_DONE = object()


class FrameChunks:
    """Iterate once over chunks of resized frames, read by a background thread (or inline).

    Args:
        frames: uint8 (H, W, 3) RGB frames.
        chunk_size: frames per chunk (the detector's batch).
        inp: the model's input config (shortest-edge resize).
        device: the consumer's device (CUDA: chunks are pinned).
        background: decode in a daemon thread, at most `depth` chunks ahead.
        keep_frames: also hand over the source frames (`Chunk.frames`), for a renderer in the same pass.
    """

    def __init__(self, frames: Iterable[np.ndarray], chunk_size: int, inp: InputConfig,
                 device: torch.device | str = "cpu", background: bool = True, depth: int = 2,
                 keep_frames: bool = False) -> None:
        self.background = background
        self.stats = ReadStats()
        pin = torch.device(device).type == "cuda"
        self._gen = _chunks(frames, chunk_size, inp, pin, self.stats, keep_frames)
        self._background = background
        if background:
            self._queue: queue.Queue = queue.Queue(maxsize=max(1, depth))
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._run, name="vita-decoder", daemon=True)
            self._thread.start()

    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        try:
            for chunk in self._gen:
                if not self._put(chunk):
                    return
        except BaseException as e:  # noqa: BLE001 - handed to the consumer, raised there
            self._put(e)
            return
        self._put(_DONE)

    def __iter__(self) -> Iterator[Chunk]:
        if not self._background:
            yield from self._gen
            return
        try:
            while True:
                t0 = time.perf_counter()
                try:
                    item = self._queue.get(timeout=1.0)
                    self.stats.wait += time.perf_counter() - t0
                except queue.Empty:
                    self.stats.wait += time.perf_counter() - t0
                    if not self._thread.is_alive() and self._queue.empty():
                        raise FrameReadError("the decoder thread stopped without finishing the video") from None
                    continue
                if item is _DONE:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            self.close()

    def close(self) -> None:
        """Stop the background thread (it exits at its next queue put)."""
        if self._background:
            self._stop.set()
            self._thread.join(timeout=5.0)
