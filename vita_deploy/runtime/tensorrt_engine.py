"""TensorRT engine execution (datacenter TensorRT 10/11, or TensorRT-RTX on its supported GPUs).

Thin and written to NVIDIA's documented Python API: deserialize, `set_input_shape`, `set_tensor_address`
with torch-allocated device memory (zero-copy with the eager reference), `execute_async_v3` on a torch CUDA
stream, and optional CUDA-graph capture for fixed shapes. It cannot run on the project's machines (no
datacenter TensorRT can be installed there and TensorRT-RTX does not support the test GPU's SM90), so its
tests skip there with that reason.
"""
from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, TypeVar

import torch

from vita_deploy.engines.backend import import_tensorrt
from vita_deploy.runtime.base import Engine, RuntimeMismatchError, TensorSpec


T = TypeVar("T")


class ShapeGraphCache(Generic[T]):
    """At most `capacity` captured graphs, keyed by their input shapes, least recently used evicted first.

    A video's last chunk and every new video size are new input shapes; one graph per engine would recapture on
    each of them (and throw away the common shape's graph). Bounded, because every graph holds its own static
    input/output buffers on the device. `capture(key)` makes an entry for a key that is not cached.
    """

    def __init__(self, capacity: int = 4) -> None:
        if capacity < 1:
            raise ValueError(f"graph cache capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self._entries: OrderedDict[Hashable, T] = OrderedDict()
        self.captures = 0

    def get(self, key: Hashable, capture: Callable[[Hashable], T]) -> T:
        if key in self._entries:
            self._entries.move_to_end(key)
            return self._entries[key]
        while len(self._entries) >= self.capacity:
            self._entries.popitem(last=False)  # drops the graph and its buffers
        entry = self._entries[key] = capture(key)
        self.captures += 1
        return entry

    def keys(self) -> list[Hashable]:
        """Cached keys, least recently used first."""
        return list(self._entries)

    def clear(self) -> None:
        self._entries.clear()


def shape_key(feeds: dict[str, torch.Tensor]) -> tuple:
    """The cache key of a set of inputs: sorted (name, shape, dtype)."""
    return tuple(sorted((name, tuple(t.shape), str(t.dtype)) for name, t in feeds.items()))


@dataclass
class _Graph:
    graph: "torch.cuda.CUDAGraph"
    inputs: dict[str, torch.Tensor]
    outputs: dict[str, torch.Tensor]


def _torch_dtype(trt, dtype) -> torch.dtype:
    table = {trt.DataType.FLOAT: torch.float32, trt.DataType.HALF: torch.float16, trt.DataType.INT32: torch.int32,
             trt.DataType.INT8: torch.int8, trt.DataType.BOOL: torch.bool}
    for name, torch_dtype in (("INT64", torch.int64), ("BF16", torch.bfloat16)):
        if hasattr(trt.DataType, name):
            table[getattr(trt.DataType, name)] = torch_dtype
    return table[dtype]


class TensorRTEngine(Engine):
    """One serialized engine. Inputs are cast to the engine's dtypes; outputs are new torch CUDA tensors."""

    def __init__(self, engine_path: str | Path, use_cuda_graph: bool = False, max_graphs: int = 4) -> None:
        self.trt = trt = import_tensorrt()
        if not torch.cuda.is_available():
            raise RuntimeError("TensorRT engines need a CUDA GPU; none is visible to torch")
        path = Path(engine_path)
        check_sidecar(path, trt)
        self.logger = trt.Logger(trt.Logger.WARNING)
        if hasattr(trt, "init_libnvinfer_plugins"):
            trt.init_libnvinfer_plugins(self.logger, "")
        self.runtime = trt.Runtime(self.logger)
        self.engine = self.runtime.deserialize_cuda_engine(path.read_bytes())
        if self.engine is None:
            raise RuntimeMismatchError(
                f"TensorRT {trt.__version__} could not deserialize {path}: engines are specific to the TensorRT "
                "version and GPU they were built with; rebuild it here with `vita-deploy build --manifest ...`")
        self.context = self.engine.create_execution_context()
        specs_in, specs_out = [], []
        for i in range(self.engine.num_io_tensors):
            name = self.engine.get_tensor_name(i)
            spec = TensorSpec(name, _torch_dtype(trt, self.engine.get_tensor_dtype(name)),
                              tuple(self.engine.get_tensor_shape(name)))
            (specs_in if self.engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT else specs_out).append(spec)
        self.inputs, self.outputs = tuple(specs_in), tuple(specs_out)
        self.use_cuda_graph = use_cuda_graph
        self._graphs: ShapeGraphCache[_Graph] = ShapeGraphCache(max_graphs)
        self._stream = torch.cuda.Stream()

    def _bind(self, feeds: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        inputs = {}
        for spec in self.inputs:
            if spec.name not in feeds:
                raise RuntimeMismatchError(f"missing input {spec.name!r}; the engine takes "
                                           f"{[s.name for s in self.inputs]}")
            t = feeds[spec.name].to(device="cuda", dtype=spec.dtype).contiguous()
            if not self.context.set_input_shape(spec.name, tuple(t.shape)):
                raise RuntimeMismatchError(f"input {spec.name!r} shape {tuple(t.shape)} is outside the engine's "
                                           "optimization profile: rebuild with wider --minShapes/--maxShapes")
            self.context.set_tensor_address(spec.name, t.data_ptr())
            inputs[spec.name] = t
        outputs = {}
        for spec in self.outputs:
            shape = tuple(self.context.get_tensor_shape(spec.name))
            out = torch.empty(shape, dtype=spec.dtype, device="cuda")
            self.context.set_tensor_address(spec.name, out.data_ptr())
            outputs[spec.name] = out
        return inputs, outputs

    def infer(self, feeds: dict[str, torch.Tensor], stream: torch.cuda.Stream | None = None
              ) -> dict[str, torch.Tensor]:
        stream = stream or torch.cuda.current_stream()
        if self.use_cuda_graph:
            return self._infer_graph(feeds, stream)
        inputs, outputs = self._bind(feeds)
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError("TensorRT execute_async_v3 failed (see the TensorRT log above)")
        return outputs

    def _infer_graph(self, feeds: dict[str, torch.Tensor], stream: torch.cuda.Stream) -> dict[str, torch.Tensor]:
        """Capture once per input shape (at most `max_graphs` kept), then copy inputs into that graph's static
        buffers and replay."""
        entry = self._graphs.get(shape_key(feeds), lambda _key: self._capture(feeds, stream))
        with torch.cuda.stream(stream):
            for name, t in feeds.items():
                entry.inputs[name].copy_(t, non_blocking=True)
            entry.graph.replay()
        return {k: v.clone() for k, v in entry.outputs.items()}

    def _capture(self, feeds: dict[str, torch.Tensor], stream: torch.cuda.Stream) -> _Graph:
        inputs, outputs = self._bind(feeds)
        self._stream.wait_stream(stream)
        with torch.cuda.stream(self._stream):
            self.context.execute_async_v3(self._stream.cuda_stream)  # warm-up outside capture
            graph = torch.cuda.CUDAGraph()
            # thread_local: the decoder and post-processing threads keep making CUDA calls (pinned copies, RLE)
            # while this thread captures; the default global mode would fail the capture on their calls.
            with torch.cuda.graph(graph, stream=self._stream, capture_error_mode="thread_local"):
                self.context.execute_async_v3(self._stream.cuda_stream)
        stream.wait_stream(self._stream)
        return _Graph(graph, inputs, outputs)

    def close(self) -> None:
        self._graphs.clear()
        self.context = None
        self.engine = None


def check_sidecar(engine_path: Path, trt) -> None:
    """Refuse an engine whose sidecar says it was built by another TensorRT flavour or version."""
    sidecar = engine_path.with_suffix(engine_path.suffix + ".json")
    if not engine_path.is_file():
        raise RuntimeMismatchError(f"engine {engine_path} does not exist: build it with `vita-deploy build`")
    if not sidecar.is_file():
        return
    meta = json.loads(sidecar.read_text())
    flavour = "tensorrt-rtx" if trt.__name__.startswith("tensorrt_rtx") else "tensorrt"
    built = (meta.get("tensorrt_flavour"), meta.get("tensorrt_version"))
    if built != (flavour, trt.__version__):
        raise RuntimeMismatchError(f"{engine_path} was built with {built[0]} {built[1]} but {flavour} "
                                   f"{trt.__version__} is installed: rebuild the engine with this TensorRT "
                                   "(`vita-deploy build --manifest ...`)")
