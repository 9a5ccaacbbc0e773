"""Triton serving against a real server: the bundled `tritonserver` (nvidia-pytriton wheel, python backend only)
on 127.0.0.1 with the repository exported for the tiny export (`python-ort` graph models + the vita_video BLS).

Answers over HTTP and gRPC must equal `run_video` on the same export in this process (same labels, RLE-identical
masks, scores within 1e-5); several concurrent clients too; bad requests get error responses while the server
keeps serving. The server is started once for the module and stopped by its process id.
"""
from __future__ import annotations

import json
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import pytest

pytest.importorskip("tritonclient.grpc", reason="tritonclient is in the [serve] extra (make install-dev)")

from google.protobuf import text_format  # noqa: E402
from tritonclient.grpc import model_config_pb2  # noqa: E402
from tritonclient.utils import InferenceServerException  # noqa: E402

from vita_deploy.config import ModelConfig  # noqa: E402
from vita_deploy.data.synthetic import make_video  # noqa: E402
from vita_deploy.export.onnx_export import load_manifest  # noqa: E402
from vita_deploy.pipeline.inference import run_video  # noqa: E402
from vita_deploy.runtime.ort_export import ort_graphs  # noqa: E402
from vita_deploy.commands import serve as serve_cli  # noqa: E402
from vita_deploy.serve.client import connect, infer_video  # noqa: E402
from vita_deploy.serve.repository import MARKER, RepoOptions, RepositoryError, export_repository  # noqa: E402
from vita_deploy.serve.server import ServerError, TritonServer, tritonserver_binary  # noqa: E402
from vita_deploy.pipeline.video_io import open_video  # noqa: E402

SCORE_ATOL = 1e-5


@pytest.fixture(scope="module")
def export_dir() -> Path:
    from test_export import exported  # the session's shared tiny export (random weights, native, fp32)

    return exported("tiny")


@pytest.fixture(scope="module")
def repo(export_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("serve") / "repo"
    export_repository(export_dir, out, RepoOptions(backend="python-ort", video_instances=2, ort_threads=1))
    return out


@pytest.fixture(scope="module")
def server(repo):
    try:
        tritonserver_binary()
    except ServerError as e:
        pytest.skip(f"no bundled tritonserver: {e}")
    srv = TritonServer(repo)
    try:
        srv.start()
        print(f"tritonserver ready in {srv.start_s:.2f} s")
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict[str, dict]:
    """Small clips: 7 frames (one detector chunk), 20 frames (two chunks of <= 18), and the 7-frame clip as mp4."""
    root = tmp_path_factory.mktemp("clips")
    short = make_video(np.random.default_rng(1), min_frames=7, max_frames=7).frames
    long = make_video(np.random.default_rng(2), min_frames=20, max_frames=20).frames
    mp4 = root / "short.mp4"
    writer = cv2.VideoWriter(str(mp4), cv2.VideoWriter_fourcc(*"mp4v"), 10, (short.shape[2], short.shape[1]))
    for f in short:
        writer.write(cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
    writer.release()
    return {"short": {"frames": short}, "long": {"frames": long}, "mp4": {"video": mp4.read_bytes(), "path": mp4}}


@pytest.fixture(scope="module")
def reference(export_dir, clips) -> dict[str, dict]:
    """run_video on the same export in this process, as YouTube-VIS results (what the server must answer)."""
    cfg = ModelConfig.from_dict(load_manifest(export_dir)["config"])
    detector, vita = ort_graphs(export_dir, threads=1)
    out = {}
    for name, clip in clips.items():
        frames = iter(clip["frames"]) if "frames" in clip else open_video(clip["path"])
        pred = run_video(frames, detector, vita, cfg)
        out[name] = {"scores": pred.scores, "labels": pred.labels, "results": pred.to_ytvis(1),
                     "num_frames": pred.num_frames}
    return out


def _request(clip: dict) -> dict:
    return {"frames": clip["frames"]} if "frames" in clip else {"video": clip["video"]}


def _assert_same(served, ref: dict) -> None:
    assert served.labels.tolist() == ref["labels"]
    np.testing.assert_allclose(served.scores, ref["scores"], rtol=0, atol=SCORE_ATOL)
    results = served.instances["results"]
    assert served.instances["num_frames"] == ref["num_frames"] and len(results) == len(ref["results"])
    for got, want in zip(results, ref["results"]):
        assert got["category_id"] == want["category_id"] and abs(got["score"] - want["score"]) <= SCORE_ATOL
        assert got["segmentations"] == want["segmentations"]  # RLE-identical masks, frame by frame


def test_repository_layout_and_configs_validate(repo, export_dir):
    manifest = load_manifest(export_dir)
    record = json.loads((repo / MARKER).read_text())
    assert record["models"] == ["frame_detector", "vita_head", "vita_video"]
    configs = {m: text_format.Parse((repo / m / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
               for m in record["models"]}
    det, head, video = configs["frame_detector"], configs["vita_head"], configs["vita_video"]
    assert det.backend == head.backend == video.backend == "python"
    assert det.max_batch_size == manifest["graphs"]["frame_detector"]["profiles"]["images"]["max"][0]
    assert det.HasField("dynamic_batching") and head.max_batch_size == 0 and video.max_batch_size == 0
    for config, graph in ((det, "frame_detector"), (head, "vita_head")):
        spec = manifest["graphs"][graph]
        assert [i.name for i in config.input] == [t["name"] for t in spec["inputs"]]
        assert [o.name for o in config.output] == [t["name"] for t in spec["outputs"]]
        assert all(config.input[0].data_type == model_config_pb2.TYPE_FP32 for _ in spec["inputs"])
        assert (repo / graph / "1" / "model.onnx").read_bytes() == (export_dir / spec["file"]).read_bytes()
    assert list(det.input[0].dims) == [3, -1, -1] and list(head.input[0].dims) == [-1, 20, 64]
    assert {i.name for i in video.input if i.optional} == {"video", "frames", "video_id"}


def test_export_repo_refuses_clobbering(repo, export_dir, tmp_path, capsys):
    with pytest.raises(RepositoryError, match="--overwrite"):
        export_repository(export_dir, repo)
    assert serve_cli.main(["export-repo", "--export", str(export_dir), "--out", str(export_dir)]) == 2
    assert "export folder" in capsys.readouterr().err
    other = tmp_path / "mine"
    other.mkdir()
    (other / "keep.txt").write_text("user file")
    assert serve_cli.main(["export-repo", "--export", str(export_dir), "--out", str(other), "--overwrite"]) == 2
    assert (other / "keep.txt").read_text() == "user file"
    copy = tmp_path / "repo_copy"
    shutil.copytree(repo, copy)
    assert serve_cli.main(["export-repo", "--export", str(export_dir), "--out", str(copy), "--overwrite"]) == 0
    assert sorted(p.name for p in copy.iterdir()) == sorted(p.name for p in repo.iterdir())


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_served_instances_equal_run_video(server, clips, reference, protocol):
    client = connect(server.http_url if protocol == "http" else server.grpc_url, protocol)
    try:
        assert client.is_model_ready("vita_video")
        for name, clip in clips.items():
            _assert_same(infer_video(client, protocol, **_request(clip)), reference[name])
    finally:
        client.close()


def test_concurrent_clients(server, clips, reference):
    jobs = [(protocol, name) for protocol in ("http", "grpc") for name in ("short", "long", "mp4")] * 2

    def one(job):
        protocol, name = job
        client = connect(server.http_url if protocol == "http" else server.grpc_url, protocol)
        try:
            return name, infer_video(client, protocol, **_request(clips[name]))
        finally:
            client.close()

    with ThreadPoolExecutor(max_workers=4) as pool:
        answers = list(pool.map(one, jobs))
    assert len(answers) == len(jobs)
    for name, served in answers:
        _assert_same(served, reference[name])


def test_bad_requests_get_errors_and_the_server_keeps_serving(server, clips, reference):
    client = connect(server.grpc_url, "grpc")
    try:
        with pytest.raises(InferenceServerException, match="cannot decode"):
            infer_video(client, "grpc", video=b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 8)
        with pytest.raises(InferenceServerException, match="(?i)data.?type|dtype|UINT8"):
            infer_video(client, "grpc", frames=clips["short"]["frames"].astype(np.float32))
        with pytest.raises(InferenceServerException, match="exactly one"):
            infer_video(client, "grpc")
        with pytest.raises(InferenceServerException, match="(?i)shape"):  # 2 channels: refused by the server
            infer_video(client, "grpc", frames=clips["short"]["frames"][..., :2])
        with pytest.raises(InferenceServerException, match="at most 64"):  # the export's max_frames
            infer_video(client, "grpc", frames=np.repeat(clips["short"]["frames"][:1, :64, :64], 65, axis=0))
        assert server.alive()
        _assert_same(infer_video(client, "grpc", **_request(clips["short"])), reference["short"])
    finally:
        client.close()


def test_container_backend_repositories(export_dir, tmp_path):
    """onnxruntime / tensorrt repositories (for NVIDIA's container) validate; tensorrt needs datacenter engines."""
    export_repository(export_dir, tmp_path / "ort", RepoOptions(backend="onnxruntime"))
    for graph in ("frame_detector", "vita_head"):
        config = text_format.Parse((tmp_path / "ort" / graph / "config.pbtxt").read_text(),
                                   model_config_pb2.ModelConfig())
        assert config.platform == "onnxruntime_onnx" and not config.backend
        assert config.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_GPU
        assert (tmp_path / "ort" / graph / "1" / "model.onnx").is_file()
        assert not (tmp_path / "ort" / graph / "1" / "model.py").exists()
    with pytest.raises(RepositoryError, match="vita-deploy build"):
        export_repository(export_dir, tmp_path / "trt", RepoOptions(backend="tensorrt"))
    assert not (tmp_path / "trt").exists()  # nothing half-written
