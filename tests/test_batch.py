"""Ray Data batch inference (`python -m vita_deploy.batch`) on 20 synthetic videos and one corrupt file, 2 actors.

The command runs as a subprocess inside a loopback-only network namespace (`unshare -n`, `lo` up), because a Ray
node listens on all interfaces; its local cluster starts and stops inside that process. Per-video results must
equal the single-process `vita-deploy infer` on the same video; --resume skips finished videos; the bad
video is reported (exit code 2) while the others finish.
"""
from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

pytest.importorskip("ray", reason="ray[data] is in the [batch] extra (make install-dev)")

from vita_deploy.commands import infer  # noqa: E402
from vita_deploy.batch import list_videos  # noqa: E402
from vita_deploy.data.synthetic import make_video  # noqa: E402
from vita_deploy.errors import InputError  # noqa: E402

NUM_VIDEOS = 20
ROOT = Path(__file__).resolve().parent.parent


def _netns_prefix() -> list[str]:
    """`unshare -n` (root) or `unshare -rn` (unprivileged user namespace) with lo up; skip if neither works."""
    reasons = []
    for flags in ("-n", "-rn"):
        try:
            r = subprocess.run(["unshare", flags, "sh", "-c", "ip link set lo up"], capture_output=True, text=True,
                               timeout=30)
        except (FileNotFoundError, subprocess.TimeoutExpired) as e:
            reasons.append(f"unshare {flags}: {e}")
            continue
        if r.returncode == 0:
            return ["unshare", flags, "sh", "-c"]
        reasons.append(f"unshare {flags}: {r.stderr.strip() or r.returncode}")
    pytest.skip("a loopback-only network namespace is not permitted here (Ray would listen on all interfaces): "
                + "; ".join(reasons))


def run_batch_cli(*args: str) -> subprocess.CompletedProcess:
    prefix = _netns_prefix()
    cmd = " ".join(shlex.quote(a) for a in [sys.executable, "-m", "vita_deploy.batch", *args])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "RAY_USAGE_STATS_ENABLED": "0"}
    return subprocess.run([*prefix, f"ip link set lo up && exec {cmd}"], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=600)


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    """20 short synthetic videos (mp4 files and frame folders alternately) and one corrupt mp4."""
    root = tmp_path_factory.mktemp("corpus")
    for i in range(NUM_VIDEOS):
        frames = make_video(np.random.default_rng(1000 + i), min_frames=3, max_frames=5).frames
        if i % 2:
            folder = root / f"clip_{i:02d}"
            folder.mkdir()
            for t, f in enumerate(frames):
                cv2.imwrite(str(folder / f"{t:05d}.png"), cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
        else:
            writer = cv2.VideoWriter(str(root / f"clip_{i:02d}.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), 10,
                                     (frames.shape[2], frames.shape[1]))
            for f in frames:
                writer.write(cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
            writer.release()
    (root / "clip_07_corrupt.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 16)
    return root


@pytest.fixture(scope="module")
def batch_run(videos, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    out = tmp_path_factory.mktemp("batch") / "run"
    proc = run_batch_cli(str(videos), "--out", str(out), "--actors", "2", "--num-cpus", "2", "--no-progress")
    return out, proc


def test_list_videos_folder_and_list_file(videos, tmp_path):
    jobs = list_videos(videos)
    assert len(jobs) == NUM_VIDEOS + 1 and [j.video_id for j in jobs] == list(range(1, NUM_VIDEOS + 2))
    assert jobs[0].name == "clip_00.mp4" and jobs[1].name == "clip_01"
    listing = tmp_path / "list.txt"
    listing.write_text(f"# two videos\n{videos / 'clip_03'}\n\n{os.path.relpath(videos / 'clip_02.mp4', tmp_path)}\n")
    assert [Path(j.path).name for j in list_videos(listing)] == ["clip_03", "clip_02.mp4"]
    listing.write_text("missing.mp4\n")
    with pytest.raises(InputError, match="do not exist"):
        list_videos(listing)
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no videos"):
        list_videos(tmp_path / "empty")


def _same_results(got: list[dict], want: list[dict]) -> None:
    assert [r["category_id"] for r in got] == [r["category_id"] for r in want]
    np.testing.assert_allclose([r["score"] for r in got], [r["score"] for r in want], rtol=0, atol=1e-5)
    assert [r["segmentations"] for r in got] == [r["segmentations"] for r in want]


def test_batch_equals_single_process_infer_and_reports_the_bad_video(batch_run, videos, tmp_path):
    out, proc = batch_run
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "clip_07_corrupt.mp4" in proc.stderr and "cannot decode" in proc.stderr
    assert f"{NUM_VIDEOS} video(s) done" in proc.stderr and "1 failed" in proc.stderr
    # Ray's own output (its C++ core's start-up and actor warnings, Ray Data's execution log) is in OUT/ray.log
    ray_log = (out / "ray.log").read_text()
    for ray_line in ("network_util", "core_worker", "execution finished", "Progress bars disabled"):
        assert ray_line not in proc.stderr, ray_line
    assert "execution finished" in ray_log
    index = {v["video"]: v for v in json.loads((out / "videos.json").read_text())}
    combined = json.loads((out / "results.json").read_text())
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in each actor (--cpus-per-actor 1)
    try:
        for job in list_videos(videos):
            entry = index[job.path]
            if "corrupt" in job.name:
                assert entry["status"].startswith("VideoReadError") and not (out / "videos" / f"{job.name}.json").exists()
                continue
            assert entry["status"] == "ok"
            doc = json.loads((out / entry["json"]).read_text())
            assert doc["video_id"] == job.video_id and doc["video"] == job.path
            ref = tmp_path / f"{job.name}.json"
            assert infer.main([job.path, "--json", str(ref), "--device", "cpu", "--video-id", str(job.video_id)]) == 0
            _same_results(doc["results"], json.loads(ref.read_text()))
            assert [r for r in combined if r["video_id"] == job.video_id] == doc["results"]
    finally:
        torch.set_num_threads(threads)
    assert {r["video_id"] for r in combined} == {j.video_id for j in list_videos(videos) if "corrupt" not in j.name}


def test_resume_skips_done_videos(batch_run, videos):
    out, _ = batch_run
    again = run_batch_cli(str(videos), "--out", str(out), "--no-progress")
    assert again.returncode == 2 and "already exists" in again.stderr  # neither --resume nor --overwrite
    redo = sorted((out / "videos").glob("*.json"))[:2]
    before = {p.name: json.loads(p.read_text()) for p in redo}
    for p in redo:
        p.unlink()
    resumed = run_batch_cli(str(videos), "--out", str(out), "--resume", "--actors", "2", "--num-cpus", "2",
                            "--no-progress")
    assert resumed.returncode == 2, resumed.stderr[-3000:]  # the corrupt video is retried and fails again
    assert f"2 video(s) done, {NUM_VIDEOS - 2} skipped" in resumed.stderr
    for p in redo:
        _same_results(json.loads(p.read_text())["results"], before[p.name]["results"])
