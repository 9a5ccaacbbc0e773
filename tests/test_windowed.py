"""Windowed (live) mode: association, windowed == offline for W >= T, live sources, SIGINT, bounded memory,
refusals (vita_deploy.pipeline.windowed, vita_deploy.pipeline.video_io live sources, infer --window)."""
from __future__ import annotations

import dataclasses
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils

from vita_deploy.commands import infer
from vita_deploy.config import get_config
from vita_deploy.data.synthetic import make_video
from vita_deploy.pipeline.inference import eager_graphs, encode_masks, run_video
from vita_deploy.loading import load_model
from vita_deploy.pipeline.video_io import FrameReader, VideoReadError, open_raw_stream, open_source
from vita_deploy.pipeline.windowed import (Tracker, TrackWriter, WindowConfig, WindowError, check_export_window,
                                  eager_track_graphs, run_windowed)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny():
    return load_model(None, "tiny").eval()


@pytest.fixture(scope="module")
def clip():
    """A 40-frame synthetic clip with 3 objects, two of which cross paths (seed chosen for that)."""
    return make_video(np.random.default_rng(0), 40, 40, 3, 3)


def _write_video(path: Path, frames: np.ndarray, fourcc: str) -> Path:
    """(T, H, W, 3) uint8 RGB frames -> a 10 fps video file in the given OpenCV codec; returns `path`."""
    import cv2

    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), 10, (frames.shape[2], frames.shape[1]))
    for f in frames:
        writer.write(cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
    writer.release()
    return path


def _windowed_results(frames, model, wcfg, tmp_path, name="w", **kw):
    detector, vita = eager_track_graphs(model)
    writer = TrackWriter(tmp_path / f"{name}.json", tmp_path / f"{name}.jsonl")
    windows = []
    summary = run_windowed(iter(frames), detector, vita, model.cfg, wcfg, writer=writer, on_window=windows.append,
                           **kw)
    writer.finish(summary.frames)
    return json.loads((tmp_path / f"{name}.json").read_text()), windows, summary


# ---- association, model-free: identities are known --------------------------------------------------------------

def _unit(x):
    return torch.nn.functional.normalize(torch.as_tensor(x, dtype=torch.float32), dim=-1)


def test_tracker_keeps_identities_under_permutation_and_noise():
    """Five objects with known embeddings come back in a shuffled order each window, with noise; one leaves
    for longer than max_gap (its track ends, it comes back as a new one), one label differs (never matched)."""
    gen = torch.Generator().manual_seed(1)
    base = _unit(torch.randn(5, 16, generator=gen))
    tracker = Tracker(WindowConfig(window=8, overlap=0, max_gap=1, threshold=0.6))
    rng = np.random.default_rng(0)
    first = tracker.update(0, [0, 1, 2, 0, 1], [0.9] * 5, base, [{}] * 5)
    assert first == [0, 1, 2, 3, 4]
    ended = []
    for w in range(1, 6):
        present = [0, 1, 2, 3] if w < 3 else [0, 1, 2, 3, 4]  # object 4 is away in windows 1 and 2
        order = rng.permutation(present).tolist()
        noisy = _unit(base[order] + 0.1 * torch.randn(len(order), 16, generator=gen))
        labels = [[0, 1, 2, 0, 1][o] for o in order]
        ids = tracker.update(w, labels, [0.8] * len(order), noisy, [{}] * len(order))
        want = [o if o != 4 else 5 for o in order]  # object 4 came back after its track ended: a new id, 5
        assert ids == want, (w, ids, want)
        ended += [t.id for t in tracker.expire(w)]
    assert ended == [4]
    # a matching embedding with another class does not continue the track
    assert tracker.update(6, [3], [0.9], base[:1], [{}]) == [6]


def test_track_score_pools_windows_like_offline():
    """Highest class probability x mask score over all windows' frames; one window: its own score exactly."""
    tracker = Tracker(WindowConfig(window=8))
    e = _unit(torch.ones(1, 4))
    window_score = 0.7 * 30.0 / (40.0 + 1e-6)
    tracker.update(0, [1], [window_score], e, [{}], areas=[40.0], probs=[0.7], numerators=[30.0])
    assert tracker.active[0].score == window_score
    tracker.update(1, [1], [0.0], e, [{}], areas=[0.0], probs=[0.1], numerators=[0.0])  # absent: empty mask
    tracker.update(2, [1], [0.9 * 9 / 10], e, [{}], areas=[10.0], probs=[0.9], numerators=[9.0])
    assert tracker.active[0].score == pytest.approx(0.9 * (30.0 + 9.0) / (50.0 + 1e-6))


def test_tracker_uses_overlap_iou_when_embeddings_tie():
    """Two same-class objects with identical embeddings are told apart by their masks on the overlap frames."""
    h, w = 20, 20
    left, right = np.zeros((1, h, w), bool), np.zeros((1, h, w), bool)
    left[0, :, :8], right[0, :, 12:] = True, True
    rl, rr = encode_masks(left)[0], encode_masks(right)[0]
    e = _unit(torch.ones(2, 4))
    tracker = Tracker(WindowConfig(window=4, overlap=1, threshold=0.5, iou_weight=0.5))
    assert tracker.update(0, [0, 0], [0.9, 0.9], e, [{}, {}]) == [0, 1]
    tracker.active[0].tail, tracker.active[1].tail = {3: rl}, {3: rr}
    assert tracker.update(1, [0, 0], [0.9, 0.9], e, [{3: rr}, {3: rl}]) == [1, 0]


def test_identities_stable_across_windows_on_a_known_clip(tiny, clip, tmp_path):
    """Every ground-truth object is followed by one track for the whole clip (40 frames in windows of 12 with
    overlap 4: 5 windows): on every frame where it is visible, the highest-scoring result whose mask overlaps it
    (IoU > 0.5) is the same track, and that track covers at least 80% of those frames."""
    results, windows, summary = _windowed_results(list(clip.frames), tiny, WindowConfig(12, 4), tmp_path)
    assert summary.windows == 5 and summary.frames == 40
    for g in range(len(clip.labels)):
        owners = []
        visible = np.flatnonzero(clip.present[g])
        for t in visible:
            gt = encode_masks(clip.masks[g, t][None])[0]
            hits = [(r["score"], n) for n, r in enumerate(results) if r["segmentations"][t] is not None
                    and float(mask_utils.iou([r["segmentations"][t]], [gt], [0])[0, 0]) > 0.5]
            if hits:
                owners.append(max(hits)[1])
        assert len(set(owners)) == 1, f"object {g} is owned by tracks {sorted(set(owners))}"
        assert len(owners) >= 0.8 * len(visible)  # the rest: frames where the tiny model segments it poorly
        assert results[owners[0]]["category_id"] == clip.labels[g] + 1


# ---- windowed == offline when W >= T ----------------------------------------------------------------------------

@pytest.mark.parametrize("window,overlap", [(40, 0), (64, 6)])
def test_windowed_equals_offline_when_window_covers_video(tiny, clip, tmp_path, window, overlap):
    frames = list(clip.frames)
    detector, vita = eager_graphs(tiny)
    offline = run_video(frames, detector, vita, tiny.cfg, features="keep").to_ytvis(1)
    results, windows, _ = _windowed_results(frames, tiny, WindowConfig(window, overlap), tmp_path)
    assert len(windows) == 1
    assert results == offline  # same instances in the same order, same RLEs, same scores (exactly)


# ---- live sources -----------------------------------------------------------------------------------------------

def test_raw_stream_reads_frames_and_drops_a_partial_tail():
    frames = np.random.default_rng(0).integers(0, 256, (3, 4, 5, 3), dtype=np.uint8)
    source = open_raw_stream(io.BytesIO(frames.tobytes() + b"\x01" * 7), 5, 4, 10.0)
    got = list(source)
    assert len(got) == 3 and all(np.array_equal(a, b) for a, b in zip(got, frames))
    assert source.partial_bytes == 7 and source.num_frames is None and iter(source) is source


def test_frame_reader_drop_late_counts_and_keeps_order():
    def source():
        for i in range(300):
            yield np.full((2, 2, 3), (i % 256, i // 256, 0), np.uint8)

    def index(frame):
        return int(frame[0, 0, 0]) + 256 * int(frame[0, 0, 1])

    reader = FrameReader(source(), policy="late", capacity=4)
    seen = []
    for frame in reader:
        seen.append(index(frame))
        time.sleep(0.002)
    assert reader.dropped > 0 and len(seen) + reader.dropped == 300
    assert seen == sorted(seen) and seen[-1] == 299 and len(reader.read_times) == len(seen)
    reader = FrameReader(source(), policy="wait", capacity=4)
    assert [index(f) for f in reader] == list(range(300)) and reader.dropped == 0


def _infer_cmd(*args):
    return [sys.executable, "-m", "vita_deploy.commands.infer", *map(str, args)]


def _env():
    """The subprocess computes with this process's thread count (conftest: 1 per xdist worker, else 2): the same
    summation order, so its results can be compared exactly with the in-process reference."""
    return {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
            "OMP_NUM_THREADS": str(torch.get_num_threads())}


def test_stdin_pipe_equals_frame_list_and_renders(tiny, clip, tmp_path):
    """Raw RGB24 frames written into a subprocess's stdin (what `ffmpeg -f rawvideo -pix_fmt rgb24 -` writes)
    give the same results as the same frames in-process; --out renders every frame."""
    h, w = clip.frames.shape[1:3]
    out = tmp_path / "pipe.json"
    proc = subprocess.run(_infer_cmd("-", "--stdin-size", f"{w}x{h}", "--stdin-fps", 10, "--window", 16,
                                     "--overlap", 4, "--config", "tiny", "--device", "cpu", "--json", out,
                                     "--jsonl", tmp_path / "pipe.jsonl", "--out", tmp_path / "pipe.mp4"),
                          input=clip.frames.tobytes(), capture_output=True, env=_env(), cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr.decode()
    ref, _, _ = _windowed_results(list(clip.frames), tiny, WindowConfig(16, 4), tmp_path, "ref")
    assert json.loads(out.read_text()) == ref
    lines = [json.loads(x) for x in (tmp_path / "pipe.jsonl").read_text().splitlines()]
    assert [x["frames"] for x in lines] == [[0, 16], [16, 28], [28, 40]]
    import cv2
    cap = cv2.VideoCapture(str(tmp_path / "pipe.mp4"))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 40
    cap.release()


def test_sigint_mid_stream_leaves_valid_outputs(tmp_path):
    """A pipe that keeps sending frames, then stays open and silent; SIGINT (by pid) must end the run with exit
    130 and complete, valid results.json and JSON lines covering every frame that was read."""
    w, h = 64, 48
    out, lines_path = tmp_path / "r.json", tmp_path / "r.jsonl"
    proc = subprocess.Popen(_infer_cmd("-", "--stdin-size", f"{w}x{h}", "--window", 6, "--overlap", 2,
                                       "--config", "tiny", "--device", "cpu", "--json", out, "--jsonl", lines_path),
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env(),
                            cwd=ROOT)
    try:
        frames = make_video(np.random.default_rng(1), 60, 60).frames
        frames = np.stack([np.ascontiguousarray(f[:h, :w]) for f in frames])
        proc.stdin.write(frames.tobytes())
        proc.stdin.flush()
        deadline = time.time() + 120
        while time.time() < deadline and (not lines_path.exists() or lines_path.read_text().count("\n") < 2):
            time.sleep(0.2)
        assert lines_path.read_text().count("\n") >= 2, "no window finished"
        proc.send_signal(signal.SIGINT)  # stdin stays open: the reader thread is blocked on it
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, stderr.decode()
    results = json.loads(out.read_text())
    lines = [json.loads(x) for x in lines_path.read_text().splitlines()]
    n = lines[-1]["frames"][1]
    assert [x["frames"][0] for x in lines] == [0] + [x["frames"][1] for x in lines[:-1]]  # contiguous, each once
    assert results and all(len(r["segmentations"]) == n for r in results)
    assert f"{n} frames" in stdout.decode() and "interrupted" in stdout.decode()


# ---- bounded memory over a long stream --------------------------------------------------------------------------

def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="resident memory is read from /proc (Linux)")
def test_memory_flat_over_5000_streamed_frames(tmp_path):
    """5,000 tiny frames through the whole windowed pipeline (reader thread, resize, windows, association,
    writer) with a stand-in detector/VITA (random instances: many short tracks start and end). The resident
    memory after 1,000 frames and after 5,000 differ by less than 8 MB (a per-frame leak of 2 KB would exceed
    it), and the live tracks stay bounded."""
    cfg = get_config("tiny")
    cfg = dataclasses.replace(cfg, input=dataclasses.replace(cfg.input, min_size_test=32, max_size_test=64),
                              inference=dataclasses.replace(cfg.inference, topk=3))
    fq_n, c = 4, 8
    gen = torch.Generator().manual_seed(0)

    def detector(images):
        n, _, hp, wp = images.shape
        return torch.randn(n, fq_n, c, generator=gen), torch.randn(n, c, hp // 4, wp // 4, generator=gen)

    def vita(frame_queries):
        q = frame_queries.mean(0)  # (fQ, C)
        logits = torch.cat([q[:, :cfg.num_classes], torch.zeros(fq_n, 1)], 1) * 3
        return logits, q, q

    def frames():
        for i in range(5000):
            yield np.full((24, 32, 3), i % 251, np.uint8)

    rss, live = {}, []

    def on_window(out):
        end = out.end
        live.append(len(set(out.track_ids)))
        for mark in (1000, 5000):
            if end >= mark and mark not in rss:
                rss[mark] = _rss_mb()

    writer = TrackWriter(tmp_path / "m.json", None)
    writer.OFFSETS_IN_MEMORY = 4  # long-lived tracks' indexes go to disk in parts: exercised here
    summary = run_windowed(frames(), detector, vita, cfg, WindowConfig(12, 3, max_gap=1), writer=writer,
                           on_window=on_window)
    writer.finish(summary.frames)
    assert summary.frames == 5000 and summary.windows == (5000 - 12) // 9 + 2
    print(f"resident memory after 1,000 frames {rss[1000]:.1f} MB, after 5,000 {rss[5000]:.1f} MB")
    assert rss[5000] - rss[1000] < 8.0, rss
    assert max(live) <= 3
    results = json.loads((tmp_path / "m.json").read_text())
    assert len(results) == summary.tracks and all(len(r["segmentations"]) == 5000 for r in results)
    covered = np.zeros(5000, int)  # each window's new frames went to its tracks: every frame has >= 1 mask
    for r in results:
        covered += [s is not None for s in r["segmentations"]]
    assert covered.min() >= 1


def test_mp4_read_as_a_stream_with_timings(tiny, clip, tmp_path):
    """An mp4 in windowed mode from the command line; --timings holds the latency and fps figures."""
    mp4 = _write_video(tmp_path / "clip.mp4", clip.frames, "mp4v")
    out, timings = tmp_path / "r.json", tmp_path / "t.json"
    assert infer.main([str(mp4), "--window", "18", "--overlap", "6", "--config", "tiny", "--device", "cpu",
                       "--json", str(out), "--timings", str(timings)]) == 0
    results, t = json.loads(out.read_text()), json.loads(timings.read_text())
    assert results and all(len(r["segmentations"]) == 40 for r in results)
    assert t["frames"] == 40 and t["windows"] == 3 and t["fps"] > 0 and 0 < t["latency_p50"] <= t["latency_max"]


# ---- refusals ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("args,message", [
    (["-"], "--window"),  # offline mode on a pipe
    (["-", "--window", "0"], "at least 1 frame"),
    (["-", "--window", "6", "--overlap", "6"], "smaller than the window"),
    (["-", "--window", "6", "--overlap", "-1"], "smaller than the window"),
    (["-", "--window", "6"], "--stdin-size"),
    (["-", "--window", "6", "--stdin-size", "64by48"], "WIDTHxHEIGHT"),
])
def test_refusals_exit_2_with_a_clear_message(tmp_path, capsys, monkeypatch, args, message):
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"")))
    assert infer.main([*args, "--config", "tiny", "--json", str(tmp_path / "r.json")]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "r.json").exists()


def test_window_longer_than_the_export_profile_is_refused():
    manifest = {"graphs": {"vita_head": {"profiles": {"frame_queries": {"min": [1, 20, 64], "opt": [36, 20, 64],
                                                                         "max": [48, 20, 64]}}}}}
    check_export_window(manifest, 48)
    with pytest.raises(WindowError, match="--max-frames 72"):
        check_export_window(manifest, 72)


def test_open_source_refuses_unknown_camera_and_missing_size():
    with pytest.raises(VideoReadError, match="--stdin-size"):
        open_source("-")
    with pytest.raises(VideoReadError, match="camera 97"):
        open_source("97")  # no such camera (an existing file named 97 would be read as a file instead)


def test_http_url_is_read_as_a_live_stream(clip, tmp_path):
    """A URL goes through OpenCV's FFmpeg backend as a LiveSource (no length, read once) and gives the file's
    frames. The server: Python's http.server on a free loopback port, stopped by its pid. The clip is an MJPEG
    AVI (an mp4 written by OpenCV keeps its index at the end, which a server without range requests cannot
    stream)."""
    import socket

    avi = _write_video(tmp_path / "clip.avi", clip.frames, "MJPG")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory",
                               str(tmp_path)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                time.sleep(0.1)
        source = open_source(f"http://127.0.0.1:{port}/clip.avi")
        assert source.num_frames is None and iter(source) is source
        assert (source.height, source.width) == clip.frames.shape[1:3]
        got = list(FrameReader(source))
    finally:
        os.kill(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
    ref = list(open_source(str(avi)))
    assert len(got) == len(ref) == 40 and all(np.array_equal(a, b) for a, b in zip(got, ref))


# ---- exported backends ------------------------------------------------------------------------------------------

def test_onnxruntime_windowed_matches_eager_and_refuses_a_window_past_its_profile(tiny, clip, tmp_path, capsys):
    """The shipped checkpoint's export (shared with tests/test_export.py, T in 1..64) on ONNX Runtime: the same
    tracks, labels and masks as the eager model associating the same way (on mask embeddings, what an export
    returns); a window longer than the export's T range is refused naming --max-frames. The export is the one
    tests/test_export.py, test_bad_inputs.py and test_properties.py share (made once per test run)."""
    from test_export import exported_trained

    from vita_deploy.pipeline.windowed import mask_embed_association
    from vita_deploy.runtime.ort_export import ort_graphs

    export = exported_trained()
    wcfg = WindowConfig(16, 4)
    runs = {}
    for name, (detector, vita) in {"eager": eager_graphs(tiny), "ort": ort_graphs(export, device="cpu")}.items():
        writer = TrackWriter(tmp_path / f"{name}.json", None)
        summary = run_windowed(iter(list(clip.frames)), detector, mask_embed_association(vita), tiny.cfg, wcfg,
                               writer=writer)
        writer.finish(summary.frames)
        runs[name] = json.loads((tmp_path / f"{name}.json").read_text())
    eager, ort = runs["eager"], runs["ort"]
    assert [r["category_id"] for r in ort] == [r["category_id"] for r in eager]
    assert np.allclose([r["score"] for r in ort], [r["score"] for r in eager], atol=1e-4)
    pairs = [(a, b) for r, e in zip(ort, eager) for a, b in zip(r["segmentations"], e["segmentations"])]
    assert all((a is None) == (b is None) for a, b in pairs)
    assert sum(a == b for a, b in pairs) >= 0.99 * len(pairs)  # a pixel on a logit's zero may flip
    assert infer.main([str(tmp_path), "--window", "65", "--backend", "onnxruntime", "--export", str(export),
                       "--device", "cpu", "--json", str(tmp_path / "x.json")]) == 2
    assert "--max-frames 65" in capsys.readouterr().err


def test_bench_windowed_quick_run(tmp_path):
    """The benchmark end to end on one short video: its table rows, JSON and plot."""
    out = tmp_path / "bw"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_windowed.py"), "--videos", "1", "--frames",
                           "24", "--windows", "18", "--overlaps", "0", "6", "--latency-videos", "1",
                           "--pace-fps", "200", "--threads", "1", "--out", str(out)],
                          capture_output=True, text=True, env=_env(), cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(out.with_suffix(".json").read_text())["rows"]
    assert [(r["mode"], r["window"], r["overlap"]) for r in rows] == [
        ("offline", None, None), ("windowed", 18, 0), ("windowed", 18, 6)]
    assert all(0 <= r["AP"] <= 100 and r["fps"] > 0 for r in rows)
    assert all(r["latency_p50_s"] > 0 for r in rows[1:]) and out.with_suffix(".png").stat().st_size > 0
    assert "| windowed | 18 | 6 |" in out.with_suffix(".md").read_text()
