"""Video input: an mp4 (or anything OpenCV reads) or a folder of frames, streamed as RGB uint8 arrays."""
from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

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
        cap = cv2.VideoCapture(str(self.path))
        try:
            while True:
                ok, frame = cap.read()
                if not ok:
                    break
                yield cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
        finally:
            cap.release()


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
