"""The eager PyTorch reference as an `Engine`."""
from __future__ import annotations

import torch

from vita_deploy.modeling.model import VitaModel
from vita_deploy.runtime.base import (DETECTOR_INPUTS, DETECTOR_OUTPUTS, VITA_INPUTS, VITA_OUTPUTS, Engine,
                                      TensorSpec)


class TorchEngine(Engine):
    """Runs `model.frame_detector` (graph="frame_detector") or `model.vita_head` (graph="vita_head")."""

    def __init__(self, model: VitaModel, graph: str, amp: bool = False) -> None:
        if graph not in ("frame_detector", "vita_head"):
            raise ValueError(f"graph must be 'frame_detector' or 'vita_head', not {graph!r}")
        self.module = getattr(model, graph).eval()
        self.amp = amp
        names = (DETECTOR_INPUTS, DETECTOR_OUTPUTS) if graph == "frame_detector" else (VITA_INPUTS, VITA_OUTPUTS)
        self.inputs = tuple(TensorSpec(n, torch.float32, ()) for n in names[0])
        self.outputs = tuple(TensorSpec(n, torch.float32, ()) for n in names[1])

    @torch.inference_mode()
    def infer(self, feeds: dict[str, torch.Tensor], stream: torch.cuda.Stream | None = None
              ) -> dict[str, torch.Tensor]:
        (x,) = (feeds[s.name] for s in self.inputs)
        ctx = torch.cuda.stream(stream) if stream is not None else torch.autocast(x.device.type, enabled=False)
        with ctx, torch.autocast(x.device.type, dtype=torch.float16, enabled=self.amp and x.device.type == "cuda"):
            outs = self.module(x)
        return {s.name: o for s, o in zip(self.outputs, outs)}
