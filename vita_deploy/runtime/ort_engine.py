"""ONNX Runtime as an `Engine`: CPU provider, or CUDA with I/O binding (device tensors in and out, no copies)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from vita_deploy.runtime.base import Engine, RuntimeMismatchError, TensorSpec

_ORT_TYPES = {"tensor(float)": torch.float32, "tensor(float16)": torch.float16, "tensor(int32)": torch.int32,
              "tensor(int64)": torch.int64, "tensor(bool)": torch.bool}


class OrtEngine(Engine):
    """One ONNX graph in an InferenceSession. device "cuda" needs onnxruntime-gpu (CUDAExecutionProvider)."""

    def __init__(self, onnx_path: str | Path, device: torch.device | str = "cpu", threads: int | None = None,
                 session_options=None) -> None:
        import onnxruntime as ort

        path = Path(onnx_path)
        if not path.is_file():
            raise RuntimeMismatchError(f"{path} does not exist: export it with `vita-deploy export`")
        self.device = torch.device(device)
        options = session_options
        if options is None:
            options = ort.SessionOptions()
            # ONNX Runtime's pool threads spin after each run by default, taking the cores that the torch
            # pre- and post-processing between graph calls needs; a pipeline wants them to sleep instead.
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if threads:
            options.intra_op_num_threads = threads
        if self.device.type == "cuda":
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise RuntimeMismatchError("device cuda needs onnxruntime-gpu (CUDAExecutionProvider); installed "
                                           f"providers: {ort.get_available_providers()}")
            providers = [("CUDAExecutionProvider", {"device_id": self.device.index or 0}), "CPUExecutionProvider"]
        else:
            providers = ["CPUExecutionProvider"]
        self.session = ort.InferenceSession(str(path), options, providers=providers)
        check_providers(self.session, self.device, path)
        self.inputs = tuple(TensorSpec(i.name, _ORT_TYPES[i.type], tuple(i.shape)) for i in self.session.get_inputs())
        self.outputs = tuple(TensorSpec(o.name, _ORT_TYPES[o.type], tuple(o.shape)) for o in self.session.get_outputs())
        self._output_shapes: dict[tuple, dict[str, tuple[int, ...]]] = {}  # input shapes -> output shapes

    def infer(self, feeds: dict[str, torch.Tensor], stream: torch.cuda.Stream | None = None
              ) -> dict[str, torch.Tensor]:
        missing = [s.name for s in self.inputs if s.name not in feeds]
        if missing:
            raise RuntimeMismatchError(f"missing inputs {missing}; the graph takes {[s.name for s in self.inputs]}")
        if self.device.type == "cuda":
            return self._infer_cuda(feeds)
        arrays = {s.name: feeds[s.name].detach().to("cpu", s.dtype).contiguous().numpy() for s in self.inputs}
        outs = self.session.run([s.name for s in self.outputs], arrays)
        return {s.name: torch.from_numpy(np.ascontiguousarray(o)) for s, o in zip(self.outputs, outs)}

    def _infer_cuda(self, feeds: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        torch.cuda.current_stream().synchronize()  # ORT runs on its own stream
        return self._infer_bound(feeds)

    def _infer_bound(self, feeds: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """I/O binding on `self.device`: inputs and outputs are torch tensors there, ORT reads and writes them in
        place (no host round trip). Output shapes are learnt per input shape on the first call with that shape
        (ORT allocates the outputs once and they are copied once); every later call with that input shape binds
        torch-allocated outputs (`bind_output(..., data_ptr)`). onnxruntime's Python OrtValue has no `to_dlpack`,
        so without this every output would go to the host and back on every call."""
        device_type, device_id = self.device.type, self.device.index or 0
        binding = self.session.io_binding()
        keep = []
        for s in self.inputs:
            t = feeds[s.name].to(self.device, s.dtype).contiguous()
            keep.append(t)
            binding.bind_input(s.name, device_type, device_id, _numpy_dtype(s.dtype), tuple(t.shape), t.data_ptr())
        key = tuple(tuple(t.shape) for t in keep)
        shapes = self._output_shapes.get(key)
        if shapes is None:  # first call with these input shapes: let ORT allocate, learn the shapes
            for s in self.outputs:
                binding.bind_output(s.name, device_type, device_id)
            self.session.run_with_iobinding(binding)
            outs = binding.get_outputs()
            self._output_shapes[key] = {s.name: tuple(o.shape()) for s, o in zip(self.outputs, outs)}
            return {s.name: torch.from_numpy(np.ascontiguousarray(o.numpy())).to(self.device)
                    for s, o in zip(self.outputs, outs)}
        results = {}
        for s in self.outputs:
            out = torch.empty(shapes[s.name], dtype=s.dtype, device=self.device)
            binding.bind_output(s.name, device_type, device_id, _numpy_dtype(s.dtype), tuple(out.shape),
                                out.data_ptr())
            results[s.name] = out
        self.session.run_with_iobinding(binding)
        return results

    def close(self) -> None:
        self.session = None


def check_providers(session, device: torch.device, path: Path) -> None:
    """Refuse a session that silently fell back to the CPU when CUDA was asked for (ONNX Runtime does that when the
    CUDA provider fails to load, e.g. a CUDA/cuDNN mismatch, and then runs every node on the CPU)."""
    if device.type == "cuda" and "CUDAExecutionProvider" not in session.get_providers():
        raise RuntimeMismatchError(
            f"ONNX Runtime could not start its CUDA provider for {path} (the session runs on "
            f"{session.get_providers()}): its CUDA and cuDNN libraries must match onnxruntime-gpu's build (see "
            "ONNX Runtime's log above); fix them, or run with --device cpu")


def _numpy_dtype(dtype: torch.dtype):
    return {torch.float32: np.float32, torch.float16: np.float16, torch.int32: np.int32, torch.int64: np.int64,
            torch.bool: np.bool_}[dtype]
