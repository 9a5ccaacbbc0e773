"""Send a video to the repository's `vita_video` model with tritonclient (HTTP or gRPC: the same calls)."""
from __future__ import annotations

import json
from dataclasses import dataclass
from types import ModuleType

import numpy as np

from vita_deploy.serve.repository import VIDEO


@dataclass
class ServedVideo:
    """vita_video's answer: scores (k,), contiguous labels (k,), and the decoded `instances` JSON (height, width,
    num_frames, YouTube-VIS `results` with one compressed RLE per frame, server-side stage `timings`)."""

    scores: np.ndarray
    labels: np.ndarray
    instances: dict


def client_module(protocol: str) -> ModuleType:
    """tritonclient.http or tritonclient.grpc."""
    if protocol == "http":
        import tritonclient.http as module
    elif protocol == "grpc":
        import tritonclient.grpc as module
    else:
        raise ValueError(f"protocol must be http or grpc, not {protocol!r}")
    return module


def tritonclient_dtype(dtype) -> str:
    """numpy dtype -> Triton datatype name ("UINT8", "FP32", ...)."""
    from tritonclient.utils import np_to_triton_dtype

    return np_to_triton_dtype(np.dtype(dtype))


def connect(url: str, protocol: str = "http", **kwargs):
    """An InferenceServerClient for `url` (host:port)."""
    return client_module(protocol).InferenceServerClient(url, **kwargs)


def video_inputs(protocol: str, *, video: bytes | None = None, frames: np.ndarray | None = None,
                 video_id: int | None = None) -> list:
    """InferInput list for one video: encoded file bytes (`video`) or uint8 RGB frames (T, H, W, 3)."""
    module = client_module(protocol)
    inputs = []
    if video is not None:
        data = np.frombuffer(video, dtype=np.uint8)  # the encoded file's bytes as a uint8 vector
        t = module.InferInput("video", [data.size], "UINT8")
        t.set_data_from_numpy(data)
        inputs.append(t)
    if frames is not None:
        frames = np.asarray(frames)
        # the model takes UINT8; another dtype is sent as what it is (and refused by the server)
        t = module.InferInput("frames", list(frames.shape), tritonclient_dtype(frames.dtype))
        t.set_data_from_numpy(frames)
        inputs.append(t)
    if video_id is not None:
        t = module.InferInput("video_id", [1], "INT64")
        t.set_data_from_numpy(np.array([video_id], dtype=np.int64))
        inputs.append(t)
    return inputs


def infer_video(client, protocol: str, *, video: bytes | None = None, frames: np.ndarray | None = None,
                video_id: int | None = None, model: str = VIDEO, timeout_s: float | None = None) -> ServedVideo:
    """One video through `model`; raises tritonclient.utils.InferenceServerException on an error response."""
    module = client_module(protocol)
    outputs = [module.InferRequestedOutput(n) for n in ("instances", "scores", "labels")]
    kwargs = {}
    if timeout_s is not None:  # gRPC: client_timeout seconds; HTTP: the client's network timeout applies
        if protocol == "grpc":
            kwargs["client_timeout"] = timeout_s
    result = client.infer(model, video_inputs(protocol, video=video, frames=frames, video_id=video_id),
                          outputs=outputs, **kwargs)
    doc = result.as_numpy("instances").tobytes().decode("utf-8")  # UTF-8 JSON as a uint8 vector
    return ServedVideo(result.as_numpy("scores"), result.as_numpy("labels"), json.loads(doc))
