"""Per-stage timing: CUDA events on the GPU (no host sync inside a stage), perf_counter on the CPU."""
from __future__ import annotations

import time
from collections import defaultdict
from contextlib import contextmanager

import torch


class StageTimer:
    """Accumulates the time spent in named stages: `with timer("detector"): ...`; `timer.totals()` in seconds."""

    def __init__(self, device: torch.device | str = "cpu", enabled: bool = True) -> None:
        self.cuda = torch.device(device).type == "cuda"
        self.enabled = enabled
        self._cpu: dict[str, float] = defaultdict(float)
        self._events: dict[str, list[tuple[torch.cuda.Event, torch.cuda.Event]]] = defaultdict(list)

    @contextmanager
    def __call__(self, stage: str):
        if not self.enabled:
            yield
            return
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            try:
                yield
            finally:
                end.record()
                self._events[stage].append((start, end))
        else:
            t0 = time.perf_counter()
            try:
                yield
            finally:
                self._cpu[stage] += time.perf_counter() - t0

    def add(self, stage: str, seconds: float) -> None:
        """Host-side time measured elsewhere (e.g. video decoding)."""
        self._cpu[stage] += seconds

    def totals(self) -> dict[str, float]:
        out = dict(self._cpu)
        if self._events:
            torch.cuda.synchronize()
            for stage, pairs in self._events.items():
                out[stage] = out.get(stage, 0.0) + sum(s.elapsed_time(e) for s, e in pairs) / 1000.0
        return out
