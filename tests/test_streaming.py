"""Streaming whole-video inference (issue 12): device RLE, windowed mask maker, recompute == keep, the features
policy, the background decoder (overlap == sequential, errors name the frame), flat memory on a long video."""
from __future__ import annotations

import dataclasses
import signal
import threading
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils

from vita_deploy.pipeline import rle
from vita_deploy.config import get_config
from vita_deploy.pipeline.feature_store import FeatureBudgetError
from vita_deploy.pipeline.inference import FeaturePolicyError, eager_graphs, eager_mask_features, encode_masks, run_video
from vita_deploy.loading import load_model
from vita_deploy.modeling.model import build_model
from vita_deploy.pipeline.prefetch import FrameReadError, is_rereadable
from vita_deploy.pipeline.video_io import VideoReadError, open_video


def coco(masks: np.ndarray) -> list[dict]:
    """pycocotools' own encoding of bool (n, H, W): the reference."""
    rles = mask_utils.encode(np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8)))
    for r in rles:
        r["counts"] = r["counts"].decode("utf-8")
    return rles


def _masks(kind: str, shape: tuple[int, int, int], rng) -> np.ndarray:
    n, h, w = shape
    m = np.zeros(shape, bool)
    if kind == "random":
        m = rng.random(shape) > 0.5
    elif kind == "sparse":
        m = rng.random(shape) > 0.97
    elif kind == "full":
        m[:] = True
    elif kind == "single_first":
        m[:, 0, 0] = True
    elif kind == "single_last":
        m[:, -1, -1] = True
    elif kind == "rows":
        m[:, ::2] = True
    elif kind == "cols":
        m[:, :, 1::3] = True
    elif kind == "checker":
        m[:] = (np.add.outer(np.arange(h), np.arange(w)) % 2).astype(bool)
    return m


@pytest.mark.parametrize("shape", [(1, 1, 1), (2, 1, 7), (3, 5, 1), (4, 37, 23), (2, 91, 150)])
@pytest.mark.parametrize("kind", ["random", "sparse", "empty", "full", "single_first", "single_last", "rows", "cols",
                                  "checker"])
def test_device_rle_equals_pycocotools(shape, kind):
    m = _masks(kind, shape, np.random.default_rng(hash((shape, kind)) % 2**32))
    ref = coco(m)
    t = torch.from_numpy(m)
    assert rle.encode(t, method="torch") == ref
    assert rle.encode(t.transpose(1, 2).contiguous(), column_major=True, method="torch") == ref
    assert rle.encode(t, method="pycocotools") == ref
    assert encode_masks(m) == ref


def test_run_lengths_are_coco_runs():
    m = np.zeros((2, 3, 2), bool)
    m[0, 1:, 0] = True  # column-major pixels: 0 1 1 | 0 0 0
    m[1, 0, 0] = True  # 1 0 0 | 0 0 0
    runs, counts = rle.run_lengths(torch.from_numpy(m))
    assert counts.tolist() == [3, 3] and runs.tolist() == [1, 2, 3, 0, 1, 5]
    assert runs.dtype == np.int32


@pytest.fixture(scope="module")
def trained():
    return load_model(None, "tiny")  # the shipped checkpoint


@pytest.fixture(scope="module")
def random_tiny():
    torch.manual_seed(0)
    return build_model(get_config("tiny")).eval()


def _frames(t, h=90, w=150, seed=0):
    """Moving bright discs on noise: the trained tiny model finds instances in them."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 80, (h, w, 3), dtype=np.uint8)
    out = []
    for i in range(t):
        f = base.copy()
        cv2.circle(f, (20 + (2 * i) % (w - 40), h // 2), h // 5, (230, 60, 40), -1)
        cv2.rectangle(f, (w - 40, 10 + i % (h - 30)), (w - 15, 30 + i % (h - 30)), (40, 220, 90), -1)
        out.append(f)
    return out


def test_real_model_masks_rle_equals_pycocotools(trained):
    pred = run_video(_frames(7), *eager_graphs(trained), trained.cfg, features="keep")
    masks = np.stack([mask_utils.decode(r).astype(bool) for segs in pred.segmentations for r in segs])
    assert masks.any(), "the trained model should find something in the clip"
    assert rle.encode(torch.from_numpy(masks), method="torch") == coco(masks)
    assert [r for segs in pred.segmentations for r in segs] == coco(masks)


def _write_mp4(path: Path, frames) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10, (frames[0].shape[1], frames[0].shape[0]))
    for f in frames:
        writer.write(cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
    writer.release()
    return path


def _write_folder(path: Path, frames) -> Path:
    path.mkdir()
    for i, f in enumerate(frames):
        cv2.imwrite(str(path / f"{i:05d}.png"), cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
    return path


def assert_same(a, b) -> None:
    assert a.labels == b.labels and a.num_frames == b.num_frames
    assert a.segmentations == b.segmentations  # RLE-identical masks
    assert max((abs(x - y) for x, y in zip(a.scores, b.scores)), default=0.0) <= 1e-6


@pytest.mark.parametrize("weights", ["trained", "random"])
def test_recompute_equals_keep_mp4_and_folder(weights, trained, random_tiny, tmp_path):
    model = trained if weights == "trained" else random_tiny
    graphs, mf = eager_graphs(model), eager_mask_features(model)
    frames = _frames(23)  # not a multiple of the chunk (18) nor the mask chunk (5)
    for source in (open_video(_write_mp4(tmp_path / "clip.mp4", frames)), open_video(_write_folder(tmp_path / "f", frames))):
        keep = run_video(source, *graphs, model.cfg, features="keep", overlap=False)
        assert keep.features_mode == "keep" and keep.num_frames == 23
        for overlap in (False, True):
            again = run_video(source, *graphs, model.cfg, mask_features=mf, features="recompute", overlap=overlap)
            assert again.features_mode == "recompute"
            assert_same(keep, again)
        assert_same(keep, run_video(source, *graphs, model.cfg, features="keep", overlap=True))  # overlap == inline
    if weights == "trained":
        assert any(s > 0.3 for s in keep.scores)


def test_recompute_equals_keep_odd_lengths_and_fp16_store(random_tiny):
    model = random_tiny
    graphs, mf = eager_graphs(model), eager_mask_features(model)
    small = dataclasses.replace(model.cfg, inference=dataclasses.replace(model.cfg.inference, chunk_size=4,
                                                                         interpolate_chunk_size=3))
    for t, cfg in ((1, model.cfg), (2, small), (11, small)):
        frames = _frames(t, 64, 96, seed=t)
        for dtype in (torch.float32, torch.float16):
            keep = run_video(frames, *graphs, cfg, features="keep", feature_dtype=dtype)
            assert_same(keep, run_video(frames, *graphs, cfg, mask_features=mf, features="recompute",
                                        feature_dtype=dtype))


def test_auto_keeps_short_and_recomputes_over_budget(random_tiny, tmp_path):
    model = random_tiny
    graphs, mf = eager_graphs(model), eager_mask_features(model)
    frames = _frames(9, 64, 96)
    keep = run_video(frames, *graphs, model.cfg, features="keep")
    auto = run_video(frames, *graphs, model.cfg, mask_features=mf, num_frames=9)
    assert auto.features_mode == "keep"
    # 9 frames of 64 x 40 x 64 float32 features = 5.9 MB > 1 MB: predicted from num_frames ...
    tight = run_video(frames, *graphs, model.cfg, mask_features=mf, num_frames=9, host_budget_mb=1.0)
    # ... or found out while running (no length given)
    late = run_video(frames, *graphs, model.cfg, mask_features=mf, host_budget_mb=1.0)
    for pred in (tight, late):
        assert pred.features_mode == "recompute"
        assert_same(keep, pred)
    assert_same(keep, auto)
    # keep over budget: disk only with a spill folder, else a clear error
    with pytest.raises(FeatureBudgetError, match="recompute"):
        run_video(frames, *graphs, model.cfg, features="keep", host_budget_mb=1.0)
    spilled = run_video(frames, *graphs, model.cfg, features="keep", host_budget_mb=1.0, spill_dir=str(tmp_path))
    assert_same(keep, spilled)
    assert not list(tmp_path.iterdir())


def test_recompute_refuses_streams_and_missing_graph(random_tiny, tmp_path):
    model = random_tiny
    graphs, mf = eager_graphs(model), eager_mask_features(model)
    frames = _frames(3, 64, 96)
    with pytest.raises(FeaturePolicyError, match="cannot be read again"):
        run_video(iter(frames), *graphs, model.cfg, mask_features=mf, features="recompute")
    with pytest.raises(FeaturePolicyError, match="mask-feature graph"):
        run_video(frames, *graphs, model.cfg, features="recompute")
    with pytest.raises(FeaturePolicyError, match="one of auto, keep, recompute"):
        run_video(frames, *graphs, model.cfg, features="disk")
    fifo = tmp_path / "pipe"
    import os
    os.mkfifo(fifo)
    assert not is_rereadable(type("Src", (), {"path": fifo, "__iter__": lambda self: iter(())})())
    assert is_rereadable(frames) and not is_rereadable(iter(frames)) and not is_rereadable(f for f in frames)
    # auto on a stream keeps (it cannot recompute), whatever the length
    pred = run_video(iter(frames), *graphs, model.cfg, mask_features=mf, num_frames=10**6)
    assert pred.features_mode == "keep" and pred.num_frames == 3


class _Broken:
    """Re-readable frames whose decoder fails at frame `bad` (or changes size there)."""

    def __init__(self, frames, bad: int, how: str = "raise") -> None:
        self.frames, self.bad, self.how = frames, bad, how

    def __iter__(self):
        for i, f in enumerate(self.frames):
            if i == self.bad:
                if self.how == "raise":
                    raise OSError("corrupt packet")
                f = f[:-2]
            yield f


@pytest.mark.parametrize("overlap", [True, False])
@pytest.mark.parametrize("how", ["raise", "size"])
def test_decoder_error_mid_video_names_the_frame(random_tiny, overlap, how):
    graphs = eager_graphs(random_tiny)
    signal.alarm(120)  # a hang fails the test instead of the CI run
    try:
        with pytest.raises(FrameReadError, match="frame 21"):
            run_video(_Broken(_frames(30, 64, 96), 21, how), *graphs, random_tiny.cfg, overlap=overlap)
    finally:
        signal.alarm(0)
    assert not [t for t in threading.enumerate() if t.name == "vita-decoder" and t.is_alive()]


def test_corrupt_frame_in_a_folder_names_the_frame(random_tiny, tmp_path):
    folder = _write_folder(tmp_path / "f", _frames(8, 64, 96))
    (folder / "00005.png").write_bytes(b"not a png")
    with pytest.raises(FrameReadError, match="frame 5"):
        run_video(open_video(folder), *eager_graphs(random_tiny), random_tiny.cfg)


class _Synthetic:
    """A long re-readable video generated on the fly (nothing held in memory)."""

    def __init__(self, n: int, h: int, w: int) -> None:
        self.n, self.h, self.w = n, h, w

    def __iter__(self):
        rng = np.random.default_rng(0)
        base = rng.integers(0, 255, (self.h, self.w, 3), dtype=np.uint8)
        for i in range(self.n):
            yield np.roll(base, i, axis=1)


def _rss_peak_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc to reset the RSS peak")
def test_streamed_2000_frames_under_a_fixed_memory_bound(random_tiny):
    """2,000 frames: recompute mode's peak RSS grows by far less than the 281 MB the kept features would take."""
    cfg = dataclasses.replace(random_tiny.cfg, input=dataclasses.replace(random_tiny.cfg.input, min_size_test=96,
                                                                         max_size_test=96))
    graphs, mf = eager_graphs(random_tiny), eager_mask_features(random_tiny)
    run_video(_Synthetic(40, 96, 96), *graphs, cfg, mask_features=mf, features="recompute")  # warm-up
    Path("/proc/self/clear_refs").write_text("5")
    base = _rss_peak_mb()
    pred = run_video(_Synthetic(2000, 96, 96), *graphs, cfg, mask_features=mf, num_frames=2000, host_budget_mb=64)
    growth = _rss_peak_mb() - base
    kept_mb = 2000 * 64 * 24 * 24 * 4 / 2**20
    print(f"\n2,000 frames: peak RSS +{growth:.0f} MB (kept features would be {kept_mb:.0f} MB)")
    assert pred.num_frames == 2000 and pred.features_mode == "recompute"
    assert all(len(s) == 2000 for s in pred.segmentations)
    assert growth < 160, f"peak RSS grew by {growth:.0f} MB"


def test_infer_cli_features_flag(tmp_path):
    import json

    from vita_deploy.commands import infer
    folder = _write_folder(tmp_path / "frames", _frames(6, 64, 96))
    out = {}
    for mode in ("keep", "recompute", "auto"):
        out[mode] = tmp_path / f"{mode}.json"
        assert infer.main([str(folder), "--config", "tiny", "--json", str(out[mode]), "--device", "cpu",
                           "--features", mode]) == 0
    keep, rec, auto = (json.loads(out[m].read_text()) for m in ("keep", "recompute", "auto"))
    assert keep == auto and [r["segmentations"] for r in keep] == [r["segmentations"] for r in rec]
    assert all(abs(a["score"] - b["score"]) <= 1e-6 for a, b in zip(keep, rec))


# -- rendering: recompute mode draws during its second pass, keep mode in a second read ------------------------

class _Collect:
    """A FrameSink that keeps what it is given."""

    def __init__(self) -> None:
        self.begun: tuple | None = None
        self.frames: list[np.ndarray] = []
        self.rles: list[list[dict]] = []

    def begin(self, class_scores, labels, height, width) -> None:
        assert self.begun is None and not self.frames, "begin once, before any frame"
        self.begun = (class_scores, labels, height, width)

    def write(self, frame, rles) -> None:
        self.frames.append(frame.copy())
        self.rles.append(rles)


class _CountReads:
    """Re-readable frames that count how often they are read."""

    def __init__(self, frames, short_on_read: int | None = None) -> None:
        self.frames, self.reads, self.short_on_read = frames, 0, short_on_read

    def __iter__(self):
        self.reads += 1
        frames = self.frames[:-1] if self.reads == self.short_on_read else self.frames
        yield from frames


def test_sink_gets_the_same_frames_and_masks_in_both_modes(trained):
    cfg = dataclasses.replace(trained.cfg, inference=dataclasses.replace(trained.cfg.inference, chunk_size=4,
                                                                         interpolate_chunk_size=3))
    graphs, mf = eager_graphs(trained), eager_mask_features(trained)
    frames = _frames(11)  # not a multiple of either chunk size
    runs = {}
    for mode, overlap in (("keep", False), ("keep", True), ("recompute", False), ("recompute", True)):
        source, sink = _CountReads(frames), _Collect()
        pred = run_video(source, *graphs, cfg, mask_features=mf, features=mode, overlap=overlap, sink=sink)
        assert pred.features_mode == mode and source.reads == 2  # one pass + the render read, or the two passes
        assert len(sink.frames) == 11 and all(np.array_equal(a, b) for a, b in zip(sink.frames, frames))
        assert [[r[q] for r in sink.rles] for q in range(len(pred.labels))] == pred.segmentations
        assert sink.begun == (pred.class_scores, pred.labels, 90, 150)
        assert pred.timings["render"] > 0
        runs[mode, overlap] = pred
    for pred in runs.values():
        assert_same(runs["keep", False], pred)
        # final score = class probability x mask score (a mean of sigmoids inside the hard mask: <= 1)
        assert all(0 <= s <= c for s, c in zip(pred.scores, pred.class_scores))
    assert any(s > 0.3 for s in runs["keep", False].class_scores)


def test_sink_needs_a_source_that_reads_twice(random_tiny):
    graphs, mf = eager_graphs(random_tiny), eager_mask_features(random_tiny)
    frames = _frames(5, 64, 96)
    for mode in ("keep", "auto"):  # (recompute refuses a stream anyway: test_recompute_refuses_streams...)
        with pytest.raises(FeaturePolicyError, match="rendering reads the video a second time"):
            run_video(iter(frames), *graphs, random_tiny.cfg, mask_features=mf, features=mode, sink=_Collect())
    with pytest.raises(VideoReadError, match="read differently the second time"):
        run_video(_CountReads(frames, short_on_read=2), *graphs, random_tiny.cfg, features="keep", sink=_Collect())
    with pytest.raises(VideoReadError, match="5 frames on the first read and 4 on the second"):
        run_video(_CountReads(frames, short_on_read=2), *graphs, random_tiny.cfg, mask_features=mf,
                  features="recompute", sink=_Collect())


def test_infer_cli_renders_the_same_mp4_in_both_modes(tmp_path):
    from vita_deploy.commands import infer
    from vita_deploy.pipeline.render import VideoRenderer

    mp4 = _write_mp4(tmp_path / "clip.mp4", _frames(13))
    for mode in ("keep", "recompute"):
        assert infer.main([str(mp4), "--json", str(tmp_path / f"{mode}.json"), "--out", str(tmp_path / f"{mode}.mp4"),
                           "--device", "cpu", "--features", mode]) == 0
    assert (tmp_path / "keep.mp4").read_bytes() == (tmp_path / "recompute.mp4").read_bytes()
    decoded = list(open_video(tmp_path / "recompute.mp4"))
    assert len(decoded) == 13 and decoded[0].shape == (90, 150, 3)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["clip.mp4", "keep.json", "keep.mp4", "recompute.json", "recompute.mp4"]  # no temporary left
    # a run that fails half-way leaves neither the mp4 nor its temporary file
    target = tmp_path / "failed.mp4"
    with pytest.raises(RuntimeError, match="boom"):
        with VideoRenderer(target, 10.0) as renderer:
            renderer.begin([0.9, 0.1], [0, 1], 90, 150)
            renderer.write(_frames(1)[0], [coco(np.ones((1, 90, 150), bool))[0]] * 2)
            raise RuntimeError("boom")
    assert renderer.shown == [0] and sorted(p.name for p in tmp_path.iterdir()) == names


def test_draw_frame_keeps_both_labels_of_one_object():
    from vita_deploy.pipeline.render import draw_frame

    frame = np.zeros((720, 1280, 3), np.uint8)
    mask = np.zeros((720, 1280), bool)
    mask[400:600, 700:900] = True
    colors = [(255, 0, 0), (0, 0, 255)]
    out = draw_frame(frame, [mask, mask.copy(), None], ["star 0.99", "star 0.83", "ring 0.5"], colors + [(0, 255, 0)])
    near = out[300:520, 690:1000]  # around the object's top-left corner, away from the legend
    for color in colors:  # each label's text keeps pixels of its own colour (the second moved below the first)
        assert (near == color).all(-1).sum() > 50, color
    assert (out[450:550, 750:850] != 0).any(-1).all()  # blended inside the mask
    assert (out[650:, :600] == 0).all()  # nothing outside the masks, labels and legend


# -- the mask-feature graph as the third ONNX graph --------------------------------------------------------------

@pytest.fixture(scope="module")
def mask_features_export():
    """tiny (seeded random weights) exported with the mask-feature graph only (the other two graphs are covered
    by test_export.py; exporting them again would add a minute of CI)."""
    from test_export import random_model, shared_export
    from vita_deploy.export import ExportOptions, export_model

    return shared_export("tiny_native_fp32_mask_features", lambda out: export_model(
        random_model("tiny"), out, ExportOptions(deform_attn="native", max_frames=64), log=print,
        graphs=("mask_features",)))


def test_mask_feature_graph_ort_parity_recompute_and_verify(mask_features_export, tmp_path, capsys):
    import json

    from test_export import random_model
    from vita_deploy.commands import verify
    from vita_deploy.export import load_manifest
    from vita_deploy.modeling.checkpoint import save_checkpoint
    from vita_deploy.runtime.ort_export import ort_mask_features

    manifest = load_manifest(mask_features_export)
    info = manifest["graphs"]["mask_features"]
    assert set(manifest["graphs"]) == {"mask_features"} and info["file"] == "mask_features.onnx"
    assert info["inputs"] == [{"name": "images", "dtype": "float32", "shape": ["batch", 3, "height", "width"]}]
    assert info["outputs"] == [{"name": "mask_features", "dtype": "float32",
                                "shape": ["batch", 64, "height/4", "width/4"]}]
    model = random_model("tiny")
    graph = ort_mask_features(mask_features_export)
    g = torch.Generator().manual_seed(2)
    for n, h, w in ((1, 64, 64), (3, 96, 160), (18, 160, 288)):
        x = torch.randn(n, 3, h, w, generator=g)
        with torch.no_grad():
            ref = model.frame_detector(x)[1]
        out = graph(x)
        assert out.shape == ref.shape
        assert (out - ref).abs().max() / ref.abs().max() < 1e-4
    # every backend can recompute: ORT's mask-feature graph in recompute mode gives the eager keep-mode result
    frames = _frames(11, 64, 96)
    keep = run_video(frames, *eager_graphs(model), model.cfg, features="keep")
    rec = run_video(frames, *eager_graphs(model), model.cfg, mask_features=graph, features="recompute")
    assert rec.features_mode == "recompute" and rec.labels == keep.labels
    np.testing.assert_allclose(rec.scores, keep.scores, rtol=1e-4, atol=1e-6)
    for a, b in zip(keep.segmentations, rec.segmentations):
        areas = mask_utils.area(a)
        ious = mask_utils.iou(a, b, [0] * len(b)).diagonal()
        assert all(iou > 0.99 or area == 0 for iou, area in zip(ious, areas))
    # `verify` covers the graph
    ckpt = save_checkpoint(tmp_path / "tiny.pth", model)
    report = tmp_path / "report.json"
    assert verify.main(["--export", str(mask_features_export), "--checkpoint", str(ckpt), "--device", "cpu",
                        "--report", str(report)]) == 0, capsys.readouterr().out
    rows = json.loads(report.read_text())["tensors"]
    assert {"mask_features N=1 mask_features", "mask_features N=18 mask_features"} == set(rows)
    assert all(r["rel"] < verify.THRESHOLDS["fp32"]["tensor_rel"] for r in rows.values())


def test_mask_feature_graph_builds_under_tensorrt_rtx(mask_features_export, tmp_path):
    pytest.importorskip("tensorrt_rtx_bindings", reason="TensorRT-RTX is not installed: `pip install -e .[dev]`")
    from vita_deploy.engines.manifest import build_from_manifest

    sidecars = build_from_manifest(mask_features_export / "manifest.json", tmp_path)
    assert set(sidecars) == {"mask_features"}
    sidecar = sidecars["mask_features"]
    assert (tmp_path / "mask_features.engine").stat().st_size > 10_000
    assert {t["name"] for t in sidecar["io"]} == {"images", "mask_features"}
    assert sidecar["profiles"]["images"]["max"][0] == 18


def test_vita_encoder_in_window_groups_equals_one_batch(random_tiny, monkeypatch):
    """Long videos run the VITA encoder's windows in groups (bounded memory); the result is the same."""
    from vita_deploy.modeling import vita_head
    fq = torch.randn(401, 20, 64, generator=torch.Generator().manual_seed(4))
    with torch.inference_mode():
        grouped = random_tiny.vita_head(fq)
        monkeypatch.setattr(vita_head, "WINDOW_GROUP", 10**9)
        single = random_tiny.vita_head(fq)
    for a, b in zip(grouped, single):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
