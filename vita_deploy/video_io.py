"""Video input: an mp4 (or anything OpenCV reads) or a folder of frames, streamed as RGB uint8 arrays."""
from __future__ import annotations

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
            for f in self.frame_files:
                yield read_image(f)
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


def read_image(path: Path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise VideoReadError(f"cannot read image {path}: the file is missing, empty or not an image")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def open_video(path: str | Path, fps: float = 10.0) -> VideoSource:
    """Open an mp4/avi/... file or a folder of frames (sorted by name). `fps` is used for frame folders."""
    path = Path(path)
    if not path.exists():
        raise VideoReadError(f"{path} does not exist: pass an mp4 file or a folder of frames")
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise VideoReadError(f"{path} holds no frames ({', '.join(IMAGE_SUFFIXES)}): pass a folder of images")
        first = read_image(files[0])
        return VideoSource(path, first.shape[0], first.shape[1], len(files), fps, files)
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
