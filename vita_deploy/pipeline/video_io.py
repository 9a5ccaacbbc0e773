"""Video input: an mp4 (or anything OpenCV reads) or a folder of frames, streamed as RGB uint8 arrays."""
from __future__ import annotations

import queue
import re
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import cv2
import numpy as np

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


class VideoReadError(ValueError):
    """A video or frame folder that cannot be read; the message names the path and the fix."""


@dataclass
class VideoSource:
    """Frames of one video, read lazily. `num_frames` is exact for folders and OpenCV's estimate for files."""

    path: Path
    height: int
    width: int
    num_frames: int
    fps: float
    frame_files: list[Path] | None = None  # set for frame folders

    def __iter__(self) -> Iterator[np.ndarray]:
        """Yields uint8 (H, W, 3) RGB frames."""
        if self.frame_files is not None:
            for i, f in enumerate(self.frame_files):
                frame = read_image(f, i)
                if frame.shape[:2] != (self.height, self.width):
                    raise VideoReadError(f"frame {i} ({f}) is {frame.shape[1]}x{frame.shape[0]} but frame 0 is "
                                         f"{self.width}x{self.height}: every frame of a video must have one size "
                                         "(resize the frames or remove the odd one)")
                yield frame
            return
        yield from capture_frames(cv2.VideoCapture(str(self.path)))


def natural_key(path: Path) -> tuple:
    """Sort key: numbers in the name compare as numbers (1.jpg, 2.jpg, ..., 10.jpg), the rest as text."""
    return tuple((0, int(t), "") if t.isdigit() else (1, 0, t.lower()) for t in re.split(r"(\d+)", path.name) if t)


def truncation_problem(path: Path) -> str | None:
    """Why a JPEG/PNG file is visibly truncated (no end marker), or None. OpenCV decodes such files into
    partly grey frames with only a warning, so they are checked before decoding."""
    suffix = path.suffix.lower()
    if suffix not in (".jpg", ".jpeg", ".png"):
        return None
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        f.seek(max(0, size - 64))
        tail = f.read()
    if head.startswith(b"\xff\xd8"):
        return None if b"\xff\xd9" in tail.rstrip(b"\x00\r\n ")[-2:] else "the JPEG has no end marker (truncated)"
    if head.startswith(b"\x89PNG"):
        return None if b"IEND" in tail else "the PNG has no IEND chunk (truncated)"
    return None  # another format under a .jpg/.png name: OpenCV decides by content


def read_image(path: Path, index: int | None = None) -> np.ndarray:
    """uint8 (H, W, 3) RGB; grayscale and 16-bit images are converted (16-bit scaled to 8-bit).

    Raises VideoReadError for a missing, empty, truncated or undecodable file (with the frame `index`)."""
    path = Path(path)
    where = f"frame {index} ({path})" if index is not None else f"image {path}"
    if not path.is_file():
        raise VideoReadError(f"cannot read {where}: the file does not exist")
    if path.stat().st_size == 0:
        raise VideoReadError(f"cannot read {where}: the file is empty (0 bytes); replace or remove it")
    problem = truncation_problem(path)
    if problem:
        raise VideoReadError(f"cannot read {where}: {problem}; re-extract the frame or remove it")
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise VideoReadError(f"cannot read {where}: the file is corrupt or not an image OpenCV can decode")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def open_video(path: str | Path, fps: float = 10.0) -> VideoSource:
    """Open an mp4/avi/... file or a folder of frames (natural name order: 2.jpg before 10.jpg).

    `fps` is used for frame folders. Raises VideoReadError naming the file (and the frame index) and the fix."""
    path = Path(path)
    if not path.exists():
        raise VideoReadError(f"{path} does not exist: pass an mp4 file or a folder of frames")
    if path.is_dir():
        files = sorted((p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES), key=natural_key)
        if not files:
            raise VideoReadError(f"{path} holds no frames ({', '.join(IMAGE_SUFFIXES)}): pass a folder of images")
        first = read_image(files[0], 0)
        return VideoSource(path, first.shape[0], first.shape[1], len(files), fps, files)
    if path.stat().st_size == 0:
        raise VideoReadError(f"{path} is empty (0 bytes): pass an mp4 file or a folder of frames")
    cap = cv2.VideoCapture(str(path))
    try:
        ok, frame = cap.read()
        if not cap.isOpened() or not ok:
            raise VideoReadError(f"cannot decode {path}: the file is corrupt or not a video OpenCV can read "
                                 "(re-encode it, e.g. `ffmpeg -i in -c:v libx264 out.mp4`, or pass a frame folder)")
        count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
        video_fps = cap.get(cv2.CAP_PROP_FPS) or fps
        return VideoSource(path, frame.shape[0], frame.shape[1], max(count, 1), float(video_fps))
    finally:
        cap.release()


# ---- live sources: cameras, stream URLs, raw frames on stdin (README "Live video") ------------------------------

LIVE_HELP = ("a camera index (0), an rtsp://, http(s):// or other stream URL, or - for raw RGB24 frames on stdin "
             "(with --stdin-size WxH --stdin-fps F)")


class LiveSource:
    """Frames of a source that has no length and can be read once: a camera, a stream URL (OpenCV's FFmpeg
    backend) or raw RGB24 frames on a binary stream (stdin). An iterator (`iter(s) is s`), so
    `prefetch.is_rereadable` is False and the offline modes refuse it. `num_frames` is None (no progress total).
    `partial_bytes` counts a trailing incomplete raw frame (dropped)."""

    num_frames = None
    live = True

    def __init__(self, name: str, height: int, width: int, fps: float, frames: Iterator[np.ndarray],
                 close: Callable[[], object] | None = None) -> None:
        self.name, self.height, self.width, self.fps = name, height, width, fps
        self._frames, self._close = frames, close
        self.partial_bytes = 0

    def __iter__(self) -> "LiveSource":
        return self

    def __next__(self) -> np.ndarray:
        return next(self._frames)

    def close(self) -> None:
        """Release the camera or stream (FrameReader calls it from its reading thread when it stops)."""
        if self._close is not None:
            self._close()
            self._close = None


def parse_frame_size(text: str) -> tuple[int, int]:
    """'WxH' -> (width, height); raises VideoReadError naming the text and the fix."""
    m = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", text or "")
    if not m or int(m.group(1)) < 1 or int(m.group(2)) < 1:
        raise VideoReadError(f"--stdin-size {text!r} is not a frame size: write WIDTHxHEIGHT, e.g. 640x480 (what "
                             "`ffmpeg ... -f rawvideo -pix_fmt rgb24 -s 640x480 -` writes)")
    return int(m.group(1)), int(m.group(2))


def _raw_frames(stream: BinaryIO, width: int, height: int, source: LiveSource) -> Iterator[np.ndarray]:
    size = width * height * 3
    while True:
        buf = bytearray(size)
        view, got = memoryview(buf), 0
        while got < size:
            n = stream.readinto(view[got:])
            if not n:
                break
            got += n
        if got < size:
            source.partial_bytes = got
            return
        yield np.frombuffer(buf, np.uint8).reshape(height, width, 3)


def open_raw_stream(stream: BinaryIO, width: int, height: int, fps: float, name: str = "-") -> LiveSource:
    """Raw RGB24 frames (width x height x 3 bytes each, no header) read from a binary stream, e.g.
    `ffmpeg -i IN -f rawvideo -pix_fmt rgb24 -` piped into stdin. A trailing partial frame is dropped."""
    if width < 1 or height < 1 or not fps > 0:
        raise VideoReadError(f"raw frames need a size and a frame rate (got {width}x{height} at {fps} fps): pass "
                             "--stdin-size WxH and --stdin-fps F")
    source = LiveSource(name, height, width, float(fps), iter(()))
    source._frames = _raw_frames(stream, width, height, source)
    return source


def capture_frames(cap: cv2.VideoCapture, first: np.ndarray | None = None) -> Iterator[np.ndarray]:
    """uint8 (H, W, 3) RGB frames of an OpenCV capture (after `first`, a BGR frame already read from it, if given)
    until it ends; the capture is released when the generator ends or is closed."""
    try:
        if first is not None:
            yield cv2.cvtColor(first, cv2.COLOR_BGR2RGB)
        while True:
            ok, frame = cap.read()
            if not ok:
                return
            yield cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
    finally:
        cap.release()


def open_capture(spec: str, fps: float = 30.0) -> LiveSource:
    """A camera (`spec` an integer index) or a stream URL (OpenCV's FFmpeg backend) as a LiveSource.
    Raises VideoReadError naming the source and the fix when it cannot be opened or gives no frame."""
    if spec.isdigit():
        cap, what = cv2.VideoCapture(int(spec)), f"camera {spec}"
        fix = "check that the camera exists (ls /dev/video*) and is not used by another program"
    else:
        cap, what = cv2.VideoCapture(spec, cv2.CAP_FFMPEG), f"stream {spec}"
        fix = "check the URL and that the server is reachable (try `ffplay URL`)"
    ok, frame = cap.read() if cap.isOpened() else (False, None)
    if not ok:
        cap.release()
        raise VideoReadError(f"cannot read {what}: {fix}")
    rate = cap.get(cv2.CAP_PROP_FPS)
    rate = float(rate) if rate and 0 < rate < 1000 else fps
    return LiveSource(spec, frame.shape[0], frame.shape[1], rate, capture_frames(cap, frame), cap.release)


def is_live_spec(spec: str) -> bool:
    """True for '-', a camera index or a URL (scheme://...): sources `open_source` opens as LiveSource."""
    return spec == "-" or spec.isdigit() or re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", spec) is not None


def open_source(spec: str, *, stdin_size: str | None = None, stdin_fps: float | None = None,
                stdin: BinaryIO | None = None,
                fps: float = 10.0) -> VideoSource | LiveSource:
    """An mp4 or frame folder (`open_video`), a camera index, a stream URL, or '-' (raw RGB24 on `stdin`,
    default sys.stdin.buffer, with stdin_size 'WxH' and stdin_fps). An existing path wins over a camera index."""
    if spec == "-":
        if not stdin_size:
            raise VideoReadError("- reads raw RGB24 frames from stdin, which carry no size: pass --stdin-size WxH "
                                 "(and --stdin-fps F), e.g. `ffmpeg -i IN -f rawvideo -pix_fmt rgb24 - | vita-deploy "
                                 "infer - --stdin-size 640x480 --stdin-fps 25 --window 36`")
        width, height = parse_frame_size(stdin_size)
        if stdin is None:
            stdin = sys.stdin.buffer
        return open_raw_stream(stdin, width, height, stdin_fps or 25.0)
    if is_live_spec(spec) and not Path(spec).exists():
        return open_capture(spec)
    return open_video(spec, fps)


class FrameReader:
    """Reads a source on its own thread into a bounded queue of (frame, read time) pairs.

    When the consumer falls behind and the queue is full, policy "wait" blocks the reader (nothing is lost: files
    and pipes, whose writer then waits too) and policy "late" drops the oldest queued frame to make room (a live
    camera or stream keeps up with the present; `dropped` counts them). Iterating yields frames in order;
    `read_times` holds the perf_counter read time of each yielded frame, in order, for the consumer to pop.
    Once `stop` is set, iteration ends after the frames already queued (a reader blocked on a silent pipe is
    left behind: it is a daemon thread)."""

    def __init__(self, frames: Iterable[np.ndarray], policy: str = "wait", capacity: int = 64,
                 stop: threading.Event | None = None) -> None:
        if policy not in ("wait", "late"):
            raise ValueError(f"drop policy must be 'wait' or 'late', not {policy!r}")
        self.policy, self.dropped, self.read = policy, 0, 0
        self.read_times: deque[float] = deque()
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, capacity))
        self._stop = stop if stop is not None else threading.Event()  # set by the caller (SIGINT) or `stop`
        self._lock = threading.Lock()
        self._it = iter(frames)
        self._source = frames
        self._thread = threading.Thread(target=self._run, name="vita-frame-reader", daemon=True)
        self._thread.start()

    _DONE = object()

    def _put(self, item, droppable: bool) -> None:
        while not self._stop.is_set():
            if droppable and self.policy == "late":
                with self._lock:
                    if self._queue.full():
                        try:
                            self._queue.get_nowait()
                            self.dropped += 1
                        except queue.Empty:
                            pass
                    try:
                        self._queue.put_nowait(item)
                        return
                    except queue.Full:
                        continue
            try:
                self._queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def _run(self) -> None:
        try:
            for frame in self._it:
                self.read += 1
                self._put((frame, time.perf_counter()), droppable=True)
                if self._stop.is_set():
                    return
        except BaseException as e:  # noqa: BLE001 - raised in the consumer
            self._put(e, droppable=False)
            return
        finally:  # release a camera or stream here, in the thread that reads it (never under a running read)
            close = getattr(self._source, "close", None)
            if close is not None:
                close()
        self._put(self._DONE, droppable=False)

    def __iter__(self) -> Iterator[np.ndarray]:
        while True:
            try:
                item = self._queue.get(timeout=0.1)
            except queue.Empty:
                if self._stop.is_set() or not self._thread.is_alive() and self._queue.empty():
                    return
                continue
            if item is self._DONE:
                return
            if isinstance(item, BaseException):
                raise item
            frame, t = item
            self.read_times.append(t)
            yield frame

    def stop(self) -> None:
        """Stop reading: the thread ends after its current read and releases the source (a read blocked on a
        silent pipe ends with the pipe; the thread is a daemon)."""
        self._stop.set()
