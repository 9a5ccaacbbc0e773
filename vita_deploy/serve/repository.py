"""An export (manifest.json + two ONNX graphs) -> a Triton Inference Server model repository.

    REPO/frame_detector/config.pbtxt + 1/model.{onnx,plan} (+ 1/model.py for python-ort)
    REPO/vita_head/config.pbtxt      + 1/model.{onnx,plan} (+ 1/model.py for python-ort)
    REPO/vita_video/config.pbtxt     + 1/model.py + 1/manifest.json      (BLS: video in, instances out)
    REPO/vita_repository.json        what was exported from where (marks the folder as ours for --overwrite)

Backends of the two graph models:
- "tensorrt": `platform: "tensorrt_plan"`, the engines built next to the export (`vita-deploy build --manifest`)
  with datacenter TensorRT of the server container's version, on the GPU.
- "onnxruntime": `platform: "onnxruntime_onnx"`, the ONNX files, on the GPU (NVIDIA's container).
- "python-ort": python-backend models running the same ONNX files in ONNX Runtime on the CPU (the only one the
  pip-installable server, which has the python backend only, can run; what the tests serve).

Scheduling (the numbers are written into each config.pbtxt with a comment):
- frame_detector: max_batch_size = the largest detector batch the export declares (its `images` profile max,
  the config's chunk size unless exported with --max-batch), dynamic batching with a short queue delay, so chunks
  of several concurrent videos of the same padded size share one call. One instance (GPU: one per GPU).
- vita_head: max_batch_size 0: its first dim is the video length T, not a batch; one call per video.
- vita_video: BLS (python backend, CPU); it decodes, runs the shared pre-processing, calls frame_detector in
  chunks of at most its max_batch_size (so video length is capped only by the VITA head's T range, unlike an
  ensemble, whose batch dim would be the frames) and vita_head once, then the shared post-processing.
  Several instances (default 2), so one video's pre/post-processing overlaps another's graph calls.
Every config.pbtxt is parsed into Triton's own schema (`tritonclient.grpc.model_config_pb2.ModelConfig`) before
the repository is moved into place.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from vita_deploy.engines.errors import ManifestError
from vita_deploy.errors import InputError
from vita_deploy.engines.manifest import read_manifest
from vita_deploy.runtime.base import DETECTOR_INPUTS, DETECTOR_OUTPUTS, VITA_INPUTS, VITA_OUTPUTS

BACKENDS = ("python-ort", "onnxruntime", "tensorrt")
DETECTOR, VITA, VIDEO = "frame_detector", "vita_head", "vita_video"
MARKER = "vita_repository.json"
REPO_FORMAT_VERSION = 1
TRITON_DTYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "int32": "TYPE_INT32", "int64": "TYPE_INT64",
                 "uint8": "TYPE_UINT8", "bool": "TYPE_BOOL"}
# vita_video's tensors (what a client sends and gets back). The encoded video and the JSON travel as UINT8 byte
# vectors, not TYPE_STRING: BYTES tensors need numpy object arrays inside the stub, and the stub of the
# pip-installed server (built against numpy 1.x) reads numpy 2 arrays as 0 bytes; all tensors cross the stub
# boundary by DLPack instead (see python_models.py).
VIDEO_INPUTS = {"video": ("TYPE_UINT8", [-1]), "frames": ("TYPE_UINT8", [-1, -1, -1, 3]),
                "video_id": ("TYPE_INT64", [1])}
VIDEO_OUTPUTS = {"instances": ("TYPE_UINT8", [-1]), "scores": ("TYPE_FP32", [-1]), "labels": ("TYPE_INT64", [-1])}


class RepositoryError(InputError):
    """An export or option that cannot become a model repository; the message says what and the fix."""


@dataclass(frozen=True)
class RepoOptions:
    backend: str = "python-ort"
    detector_instances: int = 1  # instances of each graph model (per GPU for GPU kinds)
    video_instances: int = 2  # BLS instances: videos processed at once
    queue_delay_us: int = 2000  # detector dynamic batching: how long a chunk waits for company
    ort_threads: int = 0  # python-ort: ONNX Runtime intra-op threads per graph model (0: ORT's default)
    engine_dir: str | None = None  # tensorrt: where the engines are (default: the export folder)

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise RepositoryError(f"--backend must be one of {', '.join(BACKENDS)}, not {self.backend!r}")
        for name in ("detector_instances", "video_instances"):
            if getattr(self, name) < 1:
                raise RepositoryError(f"--{name.replace('_', '-')} must be >= 1, not {getattr(self, name)}")
        if self.queue_delay_us < 0 or self.ort_threads < 0:
            raise RepositoryError("--queue-delay-us and --ort-threads must be >= 0")


def _dims(shape: list, batched: bool) -> list[int]:
    """Manifest shape (ints and symbolic names) -> Triton dims (-1 for symbolic), without the batch dim."""
    dims = [d if isinstance(d, int) and d > 0 else -1 for d in shape]
    return dims[1:] if batched else dims


def _tensor(kind: str, name: str, dtype: str, dims: list[int], optional: bool = False) -> str:
    opt = "\n    optional: true" if optional else ""
    return (f"  {{\n    name: \"{name}\"\n    data_type: {dtype}\n    dims: [ {', '.join(map(str, dims))} ]{opt}\n  }}")


def _io_block(kind: str, tensors: list[str]) -> str:
    return f"{kind} [\n" + ",\n".join(tensors) + "\n]\n"


def _params(params: dict[str, str]) -> str:
    return "".join(f"parameters {{\n  key: \"{k}\"\n  value: {{ string_value: \"{v}\" }}\n}}\n"
                   for k, v in params.items())


def _graph_io(manifest: dict, graph: str, batched: bool) -> tuple[list[str], list[str]]:
    info = manifest["graphs"][graph]
    expect_in, expect_out = (DETECTOR_INPUTS, DETECTOR_OUTPUTS) if graph == DETECTOR else (VITA_INPUTS, VITA_OUTPUTS)
    names_in = tuple(t["name"] for t in info.get("inputs", []))
    names_out = tuple(t["name"] for t in info.get("outputs", []))
    if set(names_in) != set(expect_in) or not set(expect_out) <= set(names_out):
        raise RepositoryError(f"graph {graph} of the export has inputs {names_in} and outputs {names_out}, expected "
                              f"{expect_in} -> {expect_out}: re-export with `vita-deploy export`")
    ins, outs = [], []
    for kind, specs, acc in (("input", info["inputs"], ins), ("output", info["outputs"], outs)):
        for t in specs:
            if t["dtype"] not in TRITON_DTYPES:
                raise RepositoryError(f"graph {graph}: {kind} {t['name']} has dtype {t['dtype']}, which has no "
                                      "Triton type here: re-export")
            acc.append(_tensor(kind, t["name"], TRITON_DTYPES[t["dtype"]], _dims(t["shape"], batched)))
    return ins, outs


def graph_config(manifest: dict, graph: str, options: RepoOptions) -> str:
    """config.pbtxt text of the frame_detector or vita_head model."""
    info = manifest["graphs"][graph]
    batched = graph == DETECTOR
    max_batch = info["profiles"]["images"]["max"][0] if batched else 0
    ins, outs = _graph_io(manifest, graph, batched)
    gpu = options.backend != "python-ort"
    head = {"python-ort": 'backend: "python"\n',
            "onnxruntime": 'platform: "onnxruntime_onnx"\ndefault_model_filename: "model.onnx"\n',
            "tensorrt": 'platform: "tensorrt_plan"\ndefault_model_filename: "model.plan"\n'}[options.backend]
    text = f"# {graph} of export {manifest.get('config', {}).get('name', '?')} " \
           f"({manifest.get('precision')}, deform-attn {manifest.get('deform_attn')}); backend {options.backend}.\n"
    text += f'name: "{graph}"\n' + head
    if batched:
        text += (f"# the export's largest detector batch (images profile max); the BLS sends chunks of at most this\n"
                 f"max_batch_size: {max_batch}\n")
    else:
        text += "# dim 0 of frame_queries is the video length T (1..the export's max_frames), not a batch\n" \
                "max_batch_size: 0\n"
    text += _io_block("input", ins) + _io_block("output", outs)
    text += ("# one copy of the graph per GPU (raise count for more concurrent calls per GPU)\n" if gpu else
             "# one ONNX Runtime session on the CPU (it uses the cores itself)\n")
    text += f"instance_group [\n  {{\n    kind: {'KIND_GPU' if gpu else 'KIND_CPU'}\n" \
            f"    count: {options.detector_instances}\n  }}\n]\n"
    if batched:
        text += ("# chunks of concurrent videos with the same padded frame size are merged into one call\n"
                 f"dynamic_batching {{\n  max_queue_delay_microseconds: {options.queue_delay_us}\n}}\n")
    if options.backend == "python-ort":
        text += _params({"onnx_file": "model.onnx", "intra_op_threads": str(options.ort_threads)})
    return text


def video_config(manifest: dict, options: RepoOptions) -> str:
    """config.pbtxt text of the vita_video BLS model."""
    max_batch = manifest["graphs"][DETECTOR]["profiles"]["images"]["max"][0]
    max_frames = manifest["graphs"][VITA]["profiles"]["frame_queries"]["max"][0]
    text = ("# BLS: a video (the encoded file's bytes as a uint8 vector in `video`, or uint8 RGB frames (T, H, W, 3)\n"
            "# in `frames`; exactly one) -> `instances` (UTF-8 JSON bytes: height, width, num_frames, YouTube-VIS\n"
            "# results with score, category_id and one RLE per frame), `scores` (k,), `labels` (k,) class indices.\n"
            f'name: "{VIDEO}"\nbackend: "python"\n'
            "# a request is one whole video; frames are not a batch dim (no length cap from max_batch_size)\n"
            "max_batch_size: 0\n")
    text += _io_block("input", [_tensor("input", n, t, d, optional=True) for n, (t, d) in VIDEO_INPUTS.items()])
    text += _io_block("output", [_tensor("output", n, t, d) for n, (t, d) in VIDEO_OUTPUTS.items()])
    text += ("# videos handled at once; each instance is one python stub process on the CPU\n"
             f"instance_group [\n  {{\n    kind: KIND_CPU\n    count: {options.video_instances}\n  }}\n]\n")
    text += _params({"manifest": "manifest.json", "detector_model": DETECTOR, "vita_model": VITA,
                     "detector_max_batch": str(max_batch), "max_frames": str(max_frames)})
    return text


def validate_config(text: str, name: str):
    """Parse config.pbtxt text into Triton's ModelConfig schema; returns the message (raises RepositoryError)."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    try:
        config = text_format.Parse(text, model_config_pb2.ModelConfig())
    except text_format.ParseError as e:
        raise RepositoryError(f"the generated config.pbtxt of {name} does not parse as Triton's ModelConfig: {e}"
                              ) from None
    if config.name != name:
        raise RepositoryError(f"config.pbtxt of {name} names the model {config.name!r}")
    return config


# The stub's embedded interpreter ignores PYTHONPATH (its sys.path is the base installation's), so the shim puts
# PYTHONPATH's entries first, as site dirs (their .pth files run too, e.g. an editable install's finder).
SHIM = '''"""Triton python-backend model; the code is {target}.

vita_deploy must be importable by the stub: install it in the server's Python, or put a venv's site-packages
on PYTHONPATH (as vita_deploy.serve.server does), which this file honours.
"""
import os
import site
import sys

_base = list(sys.path)
for _entry in os.environ.get("PYTHONPATH", "").split(os.pathsep):
    if _entry and _entry not in _base:
        site.addsitedir(_entry)
sys.path[:] = [p for p in sys.path if p not in _base] + _base

from {module} import {cls} as TritonPythonModel  # noqa: E402,F401
'''


def _shim(cls: str) -> str:
    module = "vita_deploy.serve.python_models"
    return SHIM.format(target=f"{module}.{cls}", module=module, cls=cls)


def _graph_files(manifest: dict, export_dir: Path, graph: str, version_dir: Path, options: RepoOptions) -> dict:
    info = manifest["graphs"][graph]
    onnx_path = Path(info["onnx_path"])
    if options.backend == "tensorrt":
        from vita_deploy.engines.builder import sidecar_path

        engine = Path(options.engine_dir or export_dir) / (onnx_path.stem + ".engine")
        fix = f"build it with `vita-deploy build --manifest {export_dir / 'manifest.json'}` (datacenter " \
              "TensorRT of the server container's version)"
        if not engine.is_file():
            raise RepositoryError(f"{engine} (the engine of {graph}) does not exist: {fix}")
        sidecar = sidecar_path(engine)
        meta = json.loads(sidecar.read_text()) if sidecar.is_file() else {}
        if meta.get("onnx_sha256") not in (None, info.get("sha256")):
            raise RepositoryError(f"{engine} was built from another {onnx_path.name} than this export's: {fix}")
        if meta.get("tensorrt_flavour") == "tensorrt-rtx":
            raise RepositoryError(f"{engine} is a TensorRT-RTX engine; Triton's tensorrt_plan backend runs datacenter "
                                  f"TensorRT engines only: {fix}")
        shutil.copyfile(engine, version_dir / "model.plan")
        return {"engine": str(engine), "tensorrt_version": meta.get("tensorrt_version")}
    import onnx

    from vita_deploy.export.plugin import PLUGIN_OP, with_plugin_function

    model = onnx.load(str(onnx_path), load_external_data=False)
    if any(n.op_type == PLUGIN_OP for n in model.graph.node):  # ONNX Runtime runs the plugin as a local function
        onnx.save(with_plugin_function(model), str(version_dir / "model.onnx"))
    else:
        shutil.copyfile(onnx_path, version_dir / "model.onnx")
    if options.backend == "python-ort":
        (version_dir / "model.py").write_text(_shim("OrtGraphModel"))
    return {"onnx": str(onnx_path), "sha256": info.get("sha256")}


def _check_out(export_dir: Path, out: Path, overwrite: bool) -> None:
    ex, o = export_dir.resolve(), out.resolve()
    if o == ex or o in ex.parents:
        raise RepositoryError(f"--out {out} is or holds the export folder {export_dir}: writing there could destroy "
                              "the export; choose another --out")
    if out.exists() and not out.is_dir():
        raise RepositoryError(f"--out {out} is an existing file, not a folder: choose another --out")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise RepositoryError(f"--out {out} already exists and is not empty: pass --overwrite to replace the "
                                  "repository in it, or choose a new folder")
        if not (out / MARKER).is_file():
            raise RepositoryError(f"--out {out} is not a repository written by export-repo (no {MARKER}); "
                                  "--overwrite replaces only those: choose a new folder or remove it yourself")


def export_repository(export_dir: str | Path, out: str | Path, options: RepoOptions | None = None,
                      overwrite: bool = False) -> dict:
    """Write the model repository for `export_dir` into `out`; returns what vita_repository.json records.

    The repository is assembled and validated in a temporary sibling folder and moved into place at the end, so
    a failure leaves no half-written repository (and an existing one, with overwrite, untouched)."""
    options = options or RepoOptions()
    export_dir, out = Path(export_dir), Path(out)
    try:
        manifest = read_manifest(export_dir)
    except ManifestError as e:
        raise RepositoryError(str(e)) from None
    missing = {DETECTOR, VITA} - set(manifest["graphs"])
    if missing:
        raise RepositoryError(f"the export {export_dir} lacks the graph(s) {sorted(missing)}: export both with "
                              "`vita-deploy export`")
    _check_out(export_dir, out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        configs = {DETECTOR: graph_config(manifest, DETECTOR, options), VITA: graph_config(manifest, VITA, options),
                   VIDEO: video_config(manifest, options)}
        files = {}
        for name, text in configs.items():
            validate_config(text, name)
            version_dir = tmp / name / "1"
            version_dir.mkdir(parents=True)
            (tmp / name / "config.pbtxt").write_text(text)
            if name == VIDEO:
                shutil.copyfile(export_dir / "manifest.json", version_dir / "manifest.json")
                (version_dir / "model.py").write_text(_shim("VitaVideoModel"))
            else:
                files[name] = _graph_files(manifest, export_dir, name, version_dir, options)
        record = {"format": "vita-deploy-triton-repository", "format_version": REPO_FORMAT_VERSION,
                  "export": str(export_dir.resolve()), "config": manifest["config"].get("name"),
                  "precision": manifest.get("precision"), "deform_attn": manifest.get("deform_attn"),
                  "options": asdict(options), "graphs": files, "models": sorted(configs)}
        (tmp / MARKER).write_text(json.dumps(record, indent=2))
        os.chmod(tmp, 0o777 & ~_umask())
        if out.exists():
            trash = Path(tempfile.mkdtemp(prefix=f".{out.name}.old.", dir=out.parent))
            os.replace(out, trash / out.name)
            os.replace(tmp, out)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return record


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
