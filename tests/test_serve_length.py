"""Serving: a video longer than the export's VITA profile is refused before any frame is processed (no Triton
server needed: VitaVideoModel's request path with its graph calls replaced by recorders)."""
from __future__ import annotations

import numpy as np
import pytest

from vita_deploy.config import get_config
from vita_deploy.serve.python_models import RequestError, VitaVideoModel


def model_with_recorders(max_frames: int) -> tuple[VitaVideoModel, list]:
    model = VitaVideoModel.__new__(VitaVideoModel)  # initialize() needs the Triton stub; set what predict uses
    calls: list = []
    model.max_frames, model.cfg = max_frames, get_config("tiny")
    model._detector = lambda images: calls.append(("detector", tuple(images.shape))) or (_ for _ in ()).throw(
        AssertionError("a frame was processed"))
    model._vita = lambda fq: calls.append(("vita", tuple(fq.shape)))
    return model, calls


def test_too_long_video_is_refused_before_its_frames_are_processed():
    model, calls = model_with_recorders(max_frames=5)
    frames = np.zeros((6, 8, 8, 3), np.uint8)
    read = []

    def lazy():
        for f in frames:
            read.append(1)
            yield f

    with pytest.raises(RequestError, match=r"6 frames.*at most 5.*--max-frames"):
        model.predict(lazy(), num_frames=6)
    assert calls == [] and read == []


def test_length_check_admits_the_profile_maximum():
    model, _ = model_with_recorders(max_frames=5)
    model.check_length(5)
    model.check_length(None)  # unknown length: the VITA call checks the real T
    with pytest.raises(RequestError):
        model.check_length(6)
