"""Batch bookkeeping without starting Ray: an interrupted --overwrite run leaves no previous result listed as
done, and an interrupt during Ray's start-up still shuts Ray down (ray.init/shutdown replaced by recorders)."""
from __future__ import annotations

import json

import pytest

ray = pytest.importorskip("ray", reason="batch needs the ray[data] extra")

from vita_deploy import batch  # noqa: E402
from vita_deploy.commands import batch as batch_command  # noqa: E402


def test_interrupted_overwrite_lists_nothing_of_the_previous_run(tmp_path, monkeypatch):
    videos = tmp_path / "videos"
    videos.mkdir()
    for name in ("a.mp4", "b.mp4"):
        (videos / name).write_bytes(b"")  # never read: the run is interrupted while Ray starts
    out = tmp_path / "out"
    (out / "videos").mkdir(parents=True)
    (out / "videos" / "a.mp4.json").write_text(json.dumps({"results": [{"video_id": 1}]}))
    (out / "results.json").write_text(json.dumps([{"video_id": 1}]))
    (out / "videos.json").write_text(json.dumps([{"video_id": 1, "status": "ok"}]))
    shutdowns = []

    def interrupted_init(ray_module, address, num_cpus):
        raise KeyboardInterrupt

    monkeypatch.setattr(batch, "_init_ray", interrupted_init)
    monkeypatch.setattr(ray, "shutdown", lambda: shutdowns.append(1))
    assert batch_command.main([str(videos), "--out", str(out), "--overwrite", "--no-progress"]) == 130
    assert shutdowns == [1]  # the finally after an interrupt in ray.init
    assert json.loads((out / "results.json").read_text()) == []
    index = json.loads((out / "videos.json").read_text())
    assert [r["status"] for r in index] == ["not run", "not run"]
    assert not list((out / "videos").glob("*.json"))


def test_index_lists_each_finished_video(tmp_path):
    jobs = [batch.VideoJob(str(tmp_path / f"{n}.mp4"), i, f"{n}.mp4") for i, n in enumerate("ab", 1)]
    (tmp_path / "videos").mkdir()
    (tmp_path / "videos" / "b.mp4.json").write_text(json.dumps({"results": [{"video_id": 2, "score": 0.5}]}))
    batch.write_index(tmp_path, jobs, failed={}, with_results=True)
    assert [r["status"] for r in json.loads((tmp_path / "videos.json").read_text())] == ["not run", "ok"]
    assert json.loads((tmp_path / "results.json").read_text()) == [{"video_id": 2, "score": 0.5}]
