"""The python-backend models of the Triton repository (`TritonPythonModel` classes; the repository's model.py
files import them, so the stub's Python must import vita_deploy, see vita_deploy/serve/server.py).

- `OrtGraphModel` (backend python-ort): one ONNX graph (frame_detector or vita_head) in ONNX Runtime on the CPU.
  Under dynamic batching one `execute` gets several requests; those of one input shape run as one call.
- `VitaVideoModel` (vita_video, every backend): BLS. A video in (encoded bytes or uint8 frames), the shared
  `run_video` with its two graphs as BLS calls to the graph models (the detector in chunks of at most its
  max_batch_size), YouTube-VIS instances out. A bad request gets an error response; the model keeps serving.

Every tensor crosses the stub boundary by DLPack (`Tensor.from_dlpack` / `to_dlpack`, as torch tensors), never
as numpy: the python-backend stub bundled with the pip-installed server is built against numpy 1.x and sees numpy 2
arrays as 0 bytes ("input byte size mismatch ... got 0"); DLPack does not depend on numpy's ABI. For the same
reason bytes (the encoded video, the JSON) travel as uint8 vectors instead of TYPE_STRING (object arrays).
`triton_python_backend_utils` exists only inside the stub, so it is imported in the methods.
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch


def _params(config: dict) -> dict[str, str]:
    return {k: v.get("string_value", "") for k, v in (config.get("parameters") or {}).items()}


def _to_torch(pb_tensor) -> torch.Tensor:
    """A pb_utils.Tensor (input or BLS output) -> a torch tensor that owns its memory (on the CPU)."""
    return torch.from_dlpack(pb_tensor.to_dlpack()).cpu().clone()


def _from_torch(pb_utils, name: str, tensor: torch.Tensor):
    return pb_utils.Tensor.from_dlpack(name, tensor.contiguous())


def _error(pb_utils, message: str):
    return pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(message))


class RequestError(ValueError):
    """A request this model cannot serve; sent back as the response's error."""


class OrtGraphModel:
    """One ONNX graph in ONNX Runtime (CPU); inputs/outputs as the model's config.pbtxt names them."""

    def initialize(self, args: dict) -> None:
        from vita_deploy.runtime.ort_engine import OrtEngine

        config = json.loads(args["model_config"])
        params = _params(config)
        version_dir = Path(args["model_repository"]) / args["model_version"]
        threads = int(params.get("intra_op_threads") or 0) or None
        self.engine = OrtEngine(version_dir / params.get("onnx_file", "model.onnx"), "cpu", threads)
        self.batched = config.get("max_batch_size", 0) > 0
        self.input_names = [t["name"] for t in config["input"]]
        self.output_names = [t["name"] for t in config["output"]]

    def execute(self, requests: list) -> list:
        import triton_python_backend_utils as pb_utils

        feeds = [{n: _to_torch(pb_utils.get_input_tensor_by_name(r, n)) for n in self.input_names} for r in requests]
        responses: list = [None] * len(requests)
        groups: dict[tuple, list[int]] = {}  # requests with the same shapes past the batch dim run as one call
        for i, f in enumerate(feeds):
            key = tuple(tuple(f[n].shape[1:]) for n in self.input_names) if self.batched else (i,)
            groups.setdefault(key, []).append(i)
        for idx in groups.values():
            try:
                merged = {n: torch.cat([feeds[i][n] for i in idx]) for n in self.input_names}
                outs = self.engine.infer(merged)
                sizes = [feeds[i][self.input_names[0]].shape[0] for i in idx]
                split = {n: torch.split(outs[n], sizes) if len(idx) > 1 else (outs[n],) for n in self.output_names}
                for j, i in enumerate(idx):
                    responses[i] = pb_utils.InferenceResponse(
                        output_tensors=[_from_torch(pb_utils, n, split[n][j]) for n in self.output_names])
            except Exception as e:  # noqa: BLE001 - the error goes back to the caller, the model keeps serving
                for i in idx:
                    responses[i] = _error(pb_utils, f"{type(e).__name__}: {e}")
        return responses

    def finalize(self) -> None:
        self.engine.close()


class VitaVideoModel:
    """BLS: video -> run_video over BLS calls to the graph models -> instances (see the repository's config)."""

    def initialize(self, args: dict) -> None:
        from vita_deploy.config import ModelConfig

        config = json.loads(args["model_config"])
        params = _params(config)
        version_dir = Path(args["model_repository"]) / args["model_version"]
        manifest = json.loads((version_dir / params.get("manifest", "manifest.json")).read_text())
        self.cfg = ModelConfig.from_dict(manifest["config"])
        self.detector_model = params.get("detector_model", "frame_detector")
        self.vita_model = params.get("vita_model", "vita_head")
        self.max_batch = int(params["detector_max_batch"])
        self.max_frames = int(params["max_frames"])

    # -- the two graphs as BLS calls (run_video's DetectorFn / VitaFn) --------------------------------------
    def _call(self, model: str, inputs: dict[str, torch.Tensor], outputs: list[str]) -> list[torch.Tensor]:
        import triton_python_backend_utils as pb_utils

        request = pb_utils.InferenceRequest(model_name=model, requested_output_names=outputs,
                                            inputs=[_from_torch(pb_utils, n, t) for n, t in inputs.items()])
        response = request.exec()
        if response.has_error():
            raise RuntimeError(f"{model}: {response.error().message()}")
        return [_to_torch(pb_utils.get_output_tensor_by_name(response, n)) for n in outputs]

    def _detector(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        fq, mf = [], []
        for start in range(0, images.shape[0], self.max_batch):
            a, b = self._call(self.detector_model, {"images": images[start:start + self.max_batch]},
                              ["frame_queries", "mask_features"])
            fq.append(a)
            mf.append(b)
        return (torch.cat(fq), torch.cat(mf)) if len(fq) > 1 else (fq[0], mf[0])

    def _vita(self, frame_queries: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.check_length(frame_queries.shape[0])
        logits, embed = self._call(self.vita_model, {"frame_queries": frame_queries}, ["class_logits", "mask_embed"])
        return logits, embed

    def check_length(self, num_frames: int | None) -> None:
        """Refuse a video longer than the export's VITA profile, before any of its frames is processed."""
        if num_frames is not None and num_frames > self.max_frames:
            raise RequestError(f"the video has {num_frames} frames; this export's VITA head takes at most "
                               f"{self.max_frames}: re-export with a larger --max-frames (`vita-deploy export "
                               f"--max-frames N`) or send a shorter clip")

    def predict(self, source, num_frames: int | None):
        """run_video over `source` (a VideoSource or an iterable of RGB frames), after the length check."""
        from vita_deploy.pipeline.inference import run_video

        self.check_length(num_frames)
        return run_video(source, self._detector, self._vita, self.cfg, num_frames=num_frames)

    # -- one request ------------------------------------------------------------------------------------------
    def _run(self, request) -> tuple[torch.Tensor, torch.Tensor, bytes]:
        import triton_python_backend_utils as pb_utils

        from vita_deploy.pipeline.video_io import open_video

        video = pb_utils.get_input_tensor_by_name(request, "video")
        frames = pb_utils.get_input_tensor_by_name(request, "frames")
        vid = pb_utils.get_input_tensor_by_name(request, "video_id")
        video_id = int(_to_torch(vid).reshape(-1)[0]) if vid is not None else 1
        if (video is None) == (frames is None):
            raise RequestError("send exactly one of the inputs `video` (the encoded file's bytes, uint8) and "
                               "`frames` (uint8 RGB, shape (T, H, W, 3))")
        with tempfile.TemporaryDirectory(prefix="vita_video_") as tmp:
            if video is not None:
                data = _to_torch(video).reshape(-1).numpy().tobytes()
                if not data:
                    raise RequestError("`video` is empty: send the bytes of an encoded video file")
                path = Path(tmp) / "video"
                path.write_bytes(data)
                source = open_video(path)
                pred = self.predict(source, source.num_frames)
            else:
                array = _to_torch(frames).numpy()
                if array.ndim != 4 or array.shape[-1] != 3 or min(array.shape) < 1:
                    raise RequestError(f"`frames` must be uint8 (T, H, W, 3) RGB with T >= 1, got {array.shape}")
                pred = self.predict(iter(array), array.shape[0])
        doc = {"height": pred.height, "width": pred.width, "num_frames": pred.num_frames,
               "results": pred.to_ytvis(video_id), "timings": pred.timings}
        return (torch.tensor(pred.scores, dtype=torch.float32), torch.tensor(pred.labels, dtype=torch.int64),
                json.dumps(doc).encode("utf-8"))

    def execute(self, requests: list) -> list:
        import triton_python_backend_utils as pb_utils

        from vita_deploy.pipeline.video_io import VideoReadError

        responses = []
        for request in requests:
            try:
                scores, labels, doc = self._run(request)
                responses.append(pb_utils.InferenceResponse(output_tensors=[
                    _from_torch(pb_utils, "instances", torch.frombuffer(bytearray(doc), dtype=torch.uint8)),
                    _from_torch(pb_utils, "scores", scores), _from_torch(pb_utils, "labels", labels)]))
            except (RequestError, VideoReadError) as e:
                responses.append(_error(pb_utils, str(e)))
            except Exception as e:  # noqa: BLE001 - a failed video must not take the model down
                responses.append(_error(pb_utils, f"{type(e).__name__} while processing the video: {e}"))
        return responses
