"""One small interface for every backend: named tensors in, named tensors out, on a stream.

An `Engine` runs one graph (the frame detector or the VITA head). `graphs_from_engines` turns two engines
into the callables that `vita_deploy.pipeline.inference.run_video` takes, so eager PyTorch, ONNX Runtime and TensorRT
share all pre- and post-processing.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch

from vita_deploy.pipeline.inference import DetectorFn, MaskFeaturesFn, VitaFn

DETECTOR_INPUTS, DETECTOR_OUTPUTS = ("images",), ("frame_queries", "mask_features")
VITA_INPUTS, VITA_OUTPUTS = ("frame_queries",), ("class_logits", "mask_embed")
MASK_FEATURES_INPUTS, MASK_FEATURES_OUTPUTS = ("images",), ("mask_features",)


class RuntimeMismatchError(ValueError):
    """An engine/ONNX file that does not fit what the runtime expects; the message says what and the fix."""


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: torch.dtype
    shape: tuple  # ints or symbolic names (str)


class Engine(ABC):
    """A graph on one backend. Use as a context manager or call `close()` to release its resources."""

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    @abstractmethod
    def infer(self, feeds: dict[str, torch.Tensor], stream: torch.cuda.Stream | None = None
              ) -> dict[str, torch.Tensor]:
        """Run the graph on `feeds` (name -> tensor); returns name -> tensor on the engine's device."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release backend resources."""

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def check_io(self, inputs: tuple[str, ...], outputs: tuple[str, ...]) -> None:
        got_in, got_out = tuple(s.name for s in self.inputs), tuple(s.name for s in self.outputs)
        if set(got_in) != set(inputs) or not set(outputs) <= set(got_out):
            raise RuntimeMismatchError(
                f"{type(self).__name__} has inputs {got_in} and outputs {got_out}, expected inputs {inputs} and "
                f"outputs {outputs}: re-export the graph with `vita-deploy export` and rebuild the engine")


def graphs_from_engines(detector: Engine, vita: Engine) -> tuple[DetectorFn, VitaFn]:
    """Two engines -> (DetectorFn, VitaFn) for run_video; outputs are returned as float32."""
    detector.check_io(DETECTOR_INPUTS, DETECTOR_OUTPUTS)
    vita.check_io(VITA_INPUTS, VITA_OUTPUTS)

    def run_detector(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = detector.infer({"images": images})
        return out["frame_queries"].float(), out["mask_features"].float()

    def run_vita(frame_queries: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = vita.infer({"frame_queries": frame_queries})
        return out["class_logits"].float(), out["mask_embed"].float()

    return run_detector, run_vita


def mask_features_from_engine(engine: Engine) -> MaskFeaturesFn:
    """The mask-feature graph's engine -> MaskFeaturesFn for run_video's recompute mode (float32 output)."""
    engine.check_io(MASK_FEATURES_INPUTS, MASK_FEATURES_OUTPUTS)

    def run(images: torch.Tensor) -> torch.Tensor:
        return engine.infer({"images": images})["mask_features"].float()

    return run
