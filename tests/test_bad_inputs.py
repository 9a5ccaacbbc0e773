"""A corpus of bad inputs to every command: each must exit with code 2, print no traceback, name the problem,
and leave every input file byte-identical (sha256 before/after).

Each case calls the command's `main(argv)` in-process (every main runs inside `vita_deploy.commands.cli`'s error
boundary, which returns argparse's exit code 2 as well); `test_exit_code_end_to_end` runs a few as real
processes. All cases share one workspace (one tiny export, one checkpoint, small clips, a 2+2-video synthetic dataset) built once per
session; a case that needs a file it might destroy gets its own copy in its case folder.

The same corpus classifies another checkout (before/after figures of issue 13), each case in a forked child
with a 60 s limit:

    OMP_NUM_THREADS=1 PYTHONPATH=<checkout> .venv/bin/python tests/test_bad_inputs.py --classify
"""
from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.util
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

# ---- the workspace -------------------------------------------------------------------------------------------


class Workspace:
    """Paths of the shared inputs (see build_workspace)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def __getattr__(self, name: str) -> Path:  # ws.clip -> root/clip.mp4 etc. via NAMES
        if name in NAMES:
            return self.root / NAMES[name]
        raise AttributeError(name)

    def p(self, rel: str) -> str:
        return str(self.root / rel)


NAMES = {"clip": "clip.mp4", "frames": "frames", "ckpt": "tiny.pth", "export": "export", "data": "data",
         "gt": "data/valid.json", "results": "results.json", "bad": "bad"}


def _write_clip(path: Path, frames: int = 4, h: int = 64, w: int = 96) -> None:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (w, h))
    rng = np.random.default_rng(0)
    for _ in range(frames):
        writer.write(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
    writer.release()


def _frames(folder: Path, n: int = 4, h: int = 64, w: int = 96, names=None) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    out = []
    for i in range(n):
        f = folder / (names[i] if names else f"{i:05d}.jpg")
        cv2.imwrite(str(f), rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
        out.append(f)
    return out


def _copy_export(src: Path, dst: Path, edit: Callable[[dict], None] | None = None) -> Path:
    shutil.copytree(src, dst)
    if edit is not None:
        m = json.loads((dst / "manifest.json").read_text())
        edit(m)
        (dst / "manifest.json").write_text(json.dumps(m, indent=2))
    return dst


def build_workspace(root: Path, export: Path | None = None) -> Workspace:
    """Write every shared input under `root`. `export`: an export of the shipped checkpoint to copy (the test
    session shares test_export's); without it the shipped checkpoint is exported here (about a minute)."""
    import torch

    from vita_deploy.data.synthetic import generate_split
    from vita_deploy.export.onnx_export import ExportOptions, export_model
    from vita_deploy.modeling.checkpoint import load_checkpoint

    shipped = Path(importlib.import_module("vita_deploy").__file__).parent / "assets" / "vita_tiny_synthetic.pth"
    ws = Workspace(root)
    bad = root / "bad"
    bad.mkdir(parents=True)
    shutil.copy(shipped, ws.ckpt)
    _write_clip(ws.clip)
    _frames(ws.frames)
    # dataset: 2 train + 2 valid videos of 3-4 frames
    generate_split(ws.data, "train", 2, 0, 3, 4, progress=False)
    generate_split(ws.data, "valid", 2, 1_000_000, 3, 4, progress=False)
    gt = json.loads(ws.gt.read_text())
    good = [{"video_id": a["video_id"], "category_id": a["category_id"], "score": 0.9,
             "segmentations": a["segmentations"]} for a in gt["annotations"]]
    ws.results.write_text(json.dumps(good))
    # export of the shipped checkpoint (its sha256 in the manifest)
    if export is not None:
        shutil.copytree(export, ws.export)
    else:
        export_model(load_checkpoint(ws.ckpt)[0], ws.export, ExportOptions(deform_attn="native", max_frames=8,
                     height=64, width=96), checkpoint=ws.ckpt, log=lambda msg: None)
    m = json.loads((ws.export / "manifest.json").read_text())

    # bad files --------------------------------------------------------------------------------------------------
    (bad / "empty.bin").write_bytes(b"")
    (bad / "text.txt").write_text("hello, not a model\n")
    (bad / "garbage.bin").write_bytes(np.random.default_rng(2).bytes(4096))
    for name in ("empty.pth", "empty.mp4", "empty.onnx", "empty.json"):
        (bad / name).write_bytes(b"")
    (bad / "text.mp4").write_text("not a video\n")
    (bad / "garbage.pth").write_bytes(np.random.default_rng(3).bytes(4096))
    (bad / "text.onnx").write_text("not an onnx file\n")
    data = ws.clip.read_bytes()
    (bad / "truncated.mp4").write_bytes(data[: len(data) // 3])
    (bad / "trunc_ckpt.pth").write_bytes(ws.ckpt.read_bytes()[:50_000])
    torch.save([1, 2, 3], bad / "list.pth")
    torch.save({"model": {"foo.weight": torch.zeros(3)}}, bad / "wrongkeys.pth")
    torch.save({"foo.weight": torch.zeros(3)}, bad / "wrongkeys_flat.pth")
    ours = torch.load(ws.ckpt, map_location="cpu", weights_only=True)
    other = dict(ours, config=dict(ours["config"], name="r50-ytvis19"))
    torch.save(other, bad / "other_config.pth")
    missing = dict(ours, model={k: v for i, (k, v) in enumerate(ours["model"].items()) if i})
    torch.save(missing, bad / "missing_key.pth")
    shapes = dict(ours, model={k: (v[:1] if i == 0 else v) for i, (k, v) in enumerate(ours["model"].items())})
    torch.save(shapes, bad / "bad_shape.pth")
    torch.save(ours["model"], bad / "bare_state_dict_ours.pth")  # our keys without format/config
    (bad / "pickle_obj.pth").write_bytes(_pickle_with_object())
    (bad / "ckpt.json").write_text("{}")
    # onnx files
    onnx_bytes = (ws.export / m["graphs"]["vita_head"]["file"]).read_bytes()
    (bad / "truncated.onnx").write_bytes(onnx_bytes[: len(onnx_bytes) // 2])
    shutil.copy(ws.export / m["graphs"]["vita_head"]["file"], bad / "vita_head.onnx")
    # frame folders
    files = _frames(bad / "frames_truncated")
    blob = files[2].read_bytes()
    files[2].write_bytes(blob[: len(blob) // 2])
    files = _frames(bad / "frames_corrupt")
    files[1].write_bytes(np.random.default_rng(4).bytes(2000))
    files = _frames(bad / "frames_empty_file")
    files[3].write_bytes(b"")
    _frames(bad / "frames_mixed")
    cv2.imwrite(str(bad / "frames_mixed" / "00002.jpg"), np.zeros((32, 48, 3), np.uint8))
    (bad / "frames_none").mkdir()
    (bad / "frames_txt").mkdir()
    (bad / "frames_txt" / "readme.txt").write_text("no frames here")
    # exports with a bad part
    _copy_export(ws.export, bad / "exp_precision_lie", lambda m: m.update(precision="fp16"))
    _copy_export(ws.export, bad / "exp_io_lie",
                 lambda m: m["graphs"]["vita_head"]["inputs"][0].update(name="queries"))
    _copy_export(ws.export, bad / "exp_dtype_lie",
                 lambda m: m["graphs"]["frame_detector"]["inputs"][0].update(dtype="float16"))
    _copy_export(ws.export, bad / "exp_no_graphs", lambda m: m.pop("graphs"))
    _copy_export(ws.export, bad / "exp_unknown_deform", lambda m: m.update(deform_attn="magic"))
    d = _copy_export(ws.export, bad / "exp_truncated_onnx")
    f = d / m["graphs"]["frame_detector"]["file"]
    f.write_bytes(f.read_bytes()[:5000])
    d = _copy_export(ws.export, bad / "exp_missing_onnx")
    (d / m["graphs"]["vita_head"]["file"]).unlink()
    d = _copy_export(ws.export, bad / "exp_bad_json")
    (d / "manifest.json").write_text('{"graphs": ')
    d = _copy_export(ws.export, bad / "exp_manifest_list")
    (d / "manifest.json").write_text("[]")
    d = _copy_export(ws.export, bad / "exp_no_manifest")
    (d / "manifest.json").unlink()
    (bad / "exp_empty").mkdir()
    # ground truth and results
    _results(bad, good, gt)
    (bad / "gt_list.json").write_text("[]")
    (bad / "gt_no_videos.json").write_text(json.dumps({"categories": gt["categories"]}))
    (bad / "gt_bad_video.json").write_text(json.dumps(dict(gt, videos=[{"id": "x"}])))
    (bad / "gt_truncated.json").write_text(ws.gt.read_text()[:100])
    # datasets
    (bad / "data_no_json").mkdir()
    (bad / "data_bad_json").mkdir()
    (bad / "data_bad_json" / "train.json").write_text("{")
    (bad / "videos_no_valid").mkdir()
    (bad / "videos_bad_valid").mkdir()
    (bad / "videos_bad_valid" / "valid.json").write_text('{"videos": 3}')
    d = bad / "videos_missing_frames"
    d.mkdir()
    shutil.copy(ws.gt, d / "valid.json")
    # a file where a folder is expected
    (bad / "a_file").write_text("I am a file")
    return ws


def _pickle_with_object() -> bytes:
    import pickle
    import collections

    # A pickle of a class (collections.Counter) that torch.load(weights_only=True) refuses.
    return pickle.dumps({"model": collections.Counter(a=1)})


def _results(bad: Path, good: list, gt: dict) -> None:
    r0 = good[0]
    v = next(v for v in gt["videos"] if v["id"] == r0["video_id"])
    h, w, t = v["height"], v["width"], v["length"]

    def one(**change) -> list:
        r = dict(r0)
        for k, val in change.items():
            if val is _DROP:
                r.pop(k)
            else:
                r[k] = val
        return [r]

    def rle(counts, size=None) -> list:
        return [{"counts": counts, "size": size or [h, w]}] + [None] * (t - 1)

    variants = {
        "not_json": "{\"video_id\": ",
        "dict": {"video_id": 1},
        "ints": [1, 2, 3],
        "video_id_list": one(video_id=[r0["video_id"]]),
        "video_id_str": one(video_id=str(r0["video_id"])),
        "video_id_unknown": one(video_id=987654),
        "video_id_missing": one(video_id=_DROP),
        "video_id_float": one(video_id=1.5),
        "category_missing": one(category_id=_DROP),
        "category_unknown": one(category_id=999),
        "category_dict": one(category_id={"id": 1}),
        "score_nan": one(score=float("nan")),
        "score_inf": one(score=float("inf")),
        "score_negative": one(score=-0.5),
        "score_string": one(score="high"),
        "score_bool": one(score=True),
        "score_missing": one(score=_DROP),
        "score_null": one(score=None),
        "segs_missing": one(segmentations=_DROP),
        "segs_string": one(segmentations="mask"),
        "segs_short": one(segmentations=r0["segmentations"][:-1]),
        "segs_long": one(segmentations=r0["segmentations"] + [None]),
        "seg_int": one(segmentations=[5] + [None] * (t - 1)),
        "seg_bad_polygon": one(segmentations=[[[1, 2, 3]]] + [None] * (t - 1)),
        "rle_garbage_counts": one(segmentations=rle("garbage!!~~" * 2000)),
        "rle_counts_wrong_total": one(segmentations=rle("0" * 3 + "1")),
        "rle_counts_list_negative": one(segmentations=rle([h * w + 5, -5])),
        "rle_counts_list_sum": one(segmentations=rle([1, 2, 3])),
        "rle_counts_list_floats": one(segmentations=rle([h * w / 2, h * w / 2])),
        "rle_counts_int": one(segmentations=rle(7)),
        "rle_size_wrong": one(segmentations=rle([h * w], [h + 1, w])),
        "rle_size_missing": one(segmentations=[{"counts": [h * w]}] + [None] * (t - 1)),
    }
    for name, value in variants.items():
        text = value if isinstance(value, str) else json.dumps(value)
        (bad / f"res_{name}.json").write_text(text)


_DROP = object()

# ---- the corpus ----------------------------------------------------------------------------------------------

COMMANDS = {  # name -> module, or a script path relative to the repository root
    "infer": "vita_deploy.commands.infer", "export": "vita_deploy.commands.export", "build": "engines/build.py",
    "verify": "vita_deploy.commands.verify", "evaluate": "vita_deploy.commands.evaluate",
    "train": "vita_deploy.commands.train",
    "synthetic": "vita_deploy.commands.data", "bench": "benchmarks/bench.py",
    "bench_kernels": "benchmarks/bench_kernels.py", "frame_latency": "benchmarks/frame_latency.py",
    "demo": "vita_deploy.commands.demo",
}


@dataclass
class Case:
    id: str
    cmd: str
    argv: Callable[[Workspace, Path], list[str]]  # (workspace, this case's empty folder) -> argv
    expect: str  # regex (case-insensitive) the output must match: it names the problem


CASES: list[Case] = []


def case(cmd: str, id: str, expect: str, argv: Callable[[Workspace, Path], list[str]]) -> None:
    CASES.append(Case(f"{cmd}-{id}", cmd, argv, expect))


def _copy(src: Path, d: Path, name: str | None = None) -> str:
    dst = d / (name or src.name)
    (shutil.copytree if src.is_dir() else shutil.copy)(src, dst)
    return str(dst)


def _link(src: Path, d: Path, name: str) -> str:
    dst = d / name
    os.symlink(src, dst)
    return str(dst)


def _hardlink(src: Path, d: Path, name: str) -> str:
    dst = d / name
    os.link(src, dst)
    return str(dst)


def _run_folder(d: Path) -> str:
    run = d / "run"
    run.mkdir()
    (run / "log.jsonl").write_text('{"iter": 10, "loss": 1.0}\n')
    (run / "last.pth").write_bytes(b"previous run's checkpoint")
    (run / "model_final.pth").write_bytes(b"previous run's final weights")
    return str(run)


def _dataset_folder(d: Path, ws: Workspace) -> str:
    return _copy(ws.data, d, "my_dataset")


CUDA_MSG = r"cuda"
RO = "/proc/vita_deploy_no_such_dir/out"  # a folder that cannot be created on any Linux machine

# infer ------------------------------------------------------------------------------------------------------------
IF = "infer"
case(IF, "video-missing", r"does not exist", lambda ws, d: [str(d / "nope.mp4")])
case(IF, "video-empty", r"empty", lambda ws, d: [ws.p("bad/empty.mp4")])
case(IF, "video-text", r"text\.mp4.*(decode|video)|(decode|video).*text\.mp4", lambda ws, d: [ws.p("bad/text.mp4")])
case(IF, "video-truncated", r"truncated\.mp4", lambda ws, d: [ws.p("bad/truncated.mp4"), "--json", str(d / "r.json")])
case(IF, "frames-none", r"no frames", lambda ws, d: [ws.p("bad/frames_none")])
case(IF, "frames-txt-only", r"no frames", lambda ws, d: [ws.p("bad/frames_txt")])
case(IF, "frames-truncated-jpeg", r"frame 2\b.*00002\.jpg|00002\.jpg.*frame 2\b",
     lambda ws, d: [ws.p("bad/frames_truncated"), "--json", str(d / "r.json")])
case(IF, "frames-corrupt-jpeg", r"frame 1\b.*00001\.jpg|00001\.jpg.*frame 1\b",
     lambda ws, d: [ws.p("bad/frames_corrupt"), "--json", str(d / "r.json")])
case(IF, "frames-empty-file", r"00003\.jpg", lambda ws, d: [ws.p("bad/frames_empty_file"), "--json", str(d / "r.json")])
case(IF, "frames-mixed-sizes", r"00002\.jpg.*(size|48x32)|(size|48x32).*00002\.jpg",
     lambda ws, d: [ws.p("bad/frames_mixed"), "--json", str(d / "r.json")])
case(IF, "out-is-input-video", r"input", lambda ws, d: [(v := _copy(ws.clip, d)), "--out", v, "--json", str(d / "r.json")])
case(IF, "json-is-input-video", r"input", lambda ws, d: [(v := _copy(ws.clip, d)), "--json", v])
case(IF, "json-symlink-to-video", r"input",
     lambda ws, d: [(v := _copy(ws.clip, d)), "--json", _link(Path(v), d, "results.json")])
case(IF, "out-symlink-to-video", r"input",
     lambda ws, d: [(v := _copy(ws.clip, d)), "--json", str(d / "r.json"), "--out", _link(Path(v), d, "render.mp4")])
case(IF, "json-hardlink-to-video", r"input",
     lambda ws, d: [(v := _copy(ws.clip, d)), "--json", _hardlink(Path(v), d, "results.json")])
case(IF, "json-is-checkpoint", r"input",
     lambda ws, d: [ws.p("clip.mp4"), "--checkpoint", (c := _copy(ws.ckpt, d)), "--json", c])
case(IF, "json-is-a-frame", r"input",
     lambda ws, d: [(f := _copy(ws.frames, d)), "--json", str(Path(f) / "00001.jpg")])
case(IF, "out-equals-json", r"same file",
     lambda ws, d: [ws.p("clip.mp4"), "--json", str(d / "x"), "--out", str(d / "x")])
case(IF, "json-is-dir", r"folder", lambda ws, d: [ws.p("clip.mp4"), "--json", str(d)])
case(IF, "out-is-dir", r"folder", lambda ws, d: [ws.p("clip.mp4"), "--json", str(d / "r.json"), "--out", str(d)])
case(IF, "json-parent-is-file", r"a_file.*file|file.*a_file",
     lambda ws, d: [ws.p("clip.mp4"), "--json", ws.p("bad/a_file/r.json")])
case(IF, "json-unwritable-folder", r"vita_deploy_no_such_dir",
     lambda ws, d: [ws.p("clip.mp4"), "--json", RO + "/r.json"])
case(IF, "ckpt-missing", r"does not exist", lambda ws, d: [ws.p("clip.mp4"), "--checkpoint", str(d / "no.pth")])
case(IF, "ckpt-empty", r"empty", lambda ws, d: [ws.p("clip.mp4"), "--checkpoint", ws.p("bad/empty.pth")])
case(IF, "ckpt-garbage", r"garbage\.pth", lambda ws, d: [ws.p("clip.mp4"), "--checkpoint", ws.p("bad/garbage.pth")])
case(IF, "ckpt-truncated", r"trunc_ckpt\.pth", lambda ws, d: [ws.p("clip.mp4"), "--checkpoint", ws.p("bad/trunc_ckpt.pth")])
case(IF, "ckpt-text", r"text\.txt", lambda ws, d: [ws.p("clip.mp4"), "--checkpoint", ws.p("bad/text.txt")])
case(IF, "ckpt-list", r"list", lambda ws, d: [ws.p("clip.mp4"), "--checkpoint", ws.p("bad/list.pth")])
case(IF, "ckpt-wrong-keys", r"does not match|keys", lambda ws, d: [ws.p("clip.mp4"), "--checkpoint", ws.p("bad/wrongkeys.pth")])
case(IF, "ckpt-missing-key", r"missing", lambda ws, d: [ws.p("clip.mp4"), "--checkpoint", ws.p("bad/missing_key.pth")])
case(IF, "ckpt-bad-shape", r"shape", lambda ws, d: [ws.p("clip.mp4"), "--checkpoint", ws.p("bad/bad_shape.pth")])
case(IF, "ckpt-pickled-object", r"weights_only|pickle", lambda ws, d: [ws.p("clip.mp4"), "--checkpoint", ws.p("bad/pickle_obj.pth")])
case(IF, "ckpt-other-config", r"r50-ytvis19.*tiny|tiny.*r50-ytvis19",
     lambda ws, d: [ws.p("clip.mp4"), "--checkpoint", ws.p("bad/other_config.pth"), "--config", "tiny"])
case(IF, "ckpt-is-dir", r"folder", lambda ws, d: [ws.p("clip.mp4"), "--checkpoint", str(d)])
case(IF, "config-unknown", r"config", lambda ws, d: [ws.p("clip.mp4"), "--config", "r18"])
case(IF, "device-cuda", CUDA_MSG, lambda ws, d: [ws.p("clip.mp4"), "--device", "cuda"])
case(IF, "device-cuda1", CUDA_MSG, lambda ws, d: [ws.p("clip.mp4"), "--device", "cuda:1"])
case(IF, "device-unknown", r"device", lambda ws, d: [ws.p("clip.mp4"), "--device", "gpu0"])
case(IF, "threshold-above-1", r"between 0 and 1", lambda ws, d: [ws.p("clip.mp4"), "--score-threshold", "2"])
case(IF, "threshold-nan", r"finite|between", lambda ws, d: [ws.p("clip.mp4"), "--score-threshold", "nan"])
case(IF, "threshold-text", r"not a number", lambda ws, d: [ws.p("clip.mp4"), "--score-threshold", "high"])
case(IF, "video-id-text", r"invalid|whole number", lambda ws, d: [ws.p("clip.mp4"), "--video-id", "one"])
case(IF, "backend-ort-no-export", r"--export", lambda ws, d: [ws.p("clip.mp4"), "--backend", "onnxruntime"])
case(IF, "export-missing", r"does not exist", lambda ws, d: [ws.p("clip.mp4"), "--backend", "onnxruntime", "--export", str(d / "none")])
case(IF, "export-empty-dir", r"manifest", lambda ws, d: [ws.p("clip.mp4"), "--backend", "onnxruntime", "--export", ws.p("bad/exp_empty")])
case(IF, "export-truncated-onnx", r"frame_detector\.onnx",
     lambda ws, d: [ws.p("clip.mp4"), "--backend", "onnxruntime", "--export", ws.p("bad/exp_truncated_onnx"), "--json", str(d / "r.json")])
case(IF, "export-missing-onnx", r"vita_head\.onnx",
     lambda ws, d: [ws.p("clip.mp4"), "--backend", "onnxruntime", "--export", ws.p("bad/exp_missing_onnx"), "--json", str(d / "r.json")])
case(IF, "export-precision-lie", r"precision",
     lambda ws, d: [ws.p("clip.mp4"), "--backend", "onnxruntime", "--export", ws.p("bad/exp_precision_lie"), "--json", str(d / "r.json")])
case(IF, "export-io-lie", r"queries|input",
     lambda ws, d: [ws.p("clip.mp4"), "--backend", "onnxruntime", "--export", ws.p("bad/exp_io_lie"), "--json", str(d / "r.json")])
case(IF, "export-bad-json", r"manifest",
     lambda ws, d: [ws.p("clip.mp4"), "--backend", "onnxruntime", "--export", ws.p("bad/exp_bad_json")])
case(IF, "export-manifest-list", r"manifest",
     lambda ws, d: [ws.p("clip.mp4"), "--backend", "onnxruntime", "--export", ws.p("bad/exp_manifest_list")])
case(IF, "export-no-graphs", r"graphs|manifest",
     lambda ws, d: [ws.p("clip.mp4"), "--backend", "onnxruntime", "--export", ws.p("bad/exp_no_graphs")])
case(IF, "export-is-file", r"folder|manifest",
     lambda ws, d: [ws.p("clip.mp4"), "--backend", "onnxruntime", "--export", ws.p("bad/a_file")])
case(IF, "amp-with-export", r"amp", lambda ws, d: [ws.p("clip.mp4"), "--amp", "--backend", "onnxruntime", "--export", ws.p("export")])
case(IF, "amp-on-cpu", r"amp|cuda", lambda ws, d: [ws.p("clip.mp4"), "--amp", "--device", "cpu", "--json", str(d / "r.json")])
case(IF, "tensorrt-no-engines", r"engine|tensorrt",
     lambda ws, d: [ws.p("clip.mp4"), "--backend", "tensorrt", "--export", ws.p("export"), "--device", "cpu", "--json", str(d / "r.json")])

# export -----------------------------------------------------------------------------------------------------------
EX = "export"
case(EX, "out-dir-is-file", r"file", lambda ws, d: ["--out-dir", ws.p("bad/a_file"), "--deform-attn", "native"])
case(EX, "out-dir-unwritable", r"vita_deploy_no_such_dir", lambda ws, d: ["--out-dir", RO, "--deform-attn", "native"])
case(EX, "ckpt-missing", r"does not exist", lambda ws, d: ["--out-dir", str(d / "e"), "--checkpoint", str(d / "x.pth")])
case(EX, "ckpt-empty", r"empty", lambda ws, d: ["--out-dir", str(d / "e"), "--checkpoint", ws.p("bad/empty.pth")])
case(EX, "ckpt-garbage", r"garbage\.pth", lambda ws, d: ["--out-dir", str(d / "e"), "--checkpoint", ws.p("bad/garbage.pth")])
case(EX, "ckpt-other-config", r"r50-ytvis19", lambda ws, d: ["--out-dir", str(d / "e"), "--checkpoint", ws.p("bad/other_config.pth")])
case(EX, "ckpt-wrong-keys", r"does not match|keys", lambda ws, d: ["--out-dir", str(d / "e"), "--checkpoint", ws.p("bad/wrongkeys.pth")])
case(EX, "max-frames-0", r"at least 1", lambda ws, d: ["--out-dir", str(d / "e"), "--max-frames", "0"])
case(EX, "max-frames-negative", r"at least 1", lambda ws, d: ["--out-dir", str(d / "e"), "--max-frames", "-4"])
case(EX, "height-not-multiple", r"32", lambda ws, d: ["--out-dir", str(d / "e"), "--height", "33", "--width", "64"])
case(EX, "height-0", r"at least 1|32", lambda ws, d: ["--out-dir", str(d / "e"), "--height", "0", "--width", "64"])
case(EX, "width-negative", r"at least 1|32", lambda ws, d: ["--out-dir", str(d / "e"), "--height", "64", "--width", "-64"])
case(EX, "max-batch-0", r"at least 1", lambda ws, d: ["--out-dir", str(d / "e"), "--max-batch", "0"])
case(EX, "config-unknown", r"config", lambda ws, d: ["--out-dir", str(d / "e"), "--config", "vit-h"])
case(EX, "out-dir-holds-checkpoint", r"input|checkpoint",
     lambda ws, d: ["--out-dir", str(d), "--checkpoint", _copy(ws.ckpt, d, "frame_detector.onnx"), "--deform-attn", "native"])

# engines/build.py ---------------------------------------------------------------------------------------------------
BU = "build"
case(BU, "onnx-missing", r"does not exist", lambda ws, d: ["--onnx", str(d / "m.onnx"), "--saveEngine", str(d / "m.engine")])
case(BU, "onnx-empty", r"empty", lambda ws, d: ["--onnx", ws.p("bad/empty.onnx"), "--saveEngine", str(d / "m.engine")])
case(BU, "onnx-text", r"text\.onnx", lambda ws, d: ["--onnx", ws.p("bad/text.onnx"), "--saveEngine", str(d / "m.engine")])
case(BU, "onnx-truncated", r"truncated\.onnx", lambda ws, d: ["--onnx", ws.p("bad/truncated.onnx"), "--saveEngine", str(d / "m.engine")])
case(BU, "save-engine-is-onnx", r"input", lambda ws, d: ["--onnx", (o := _copy(ws.bad / "vita_head.onnx", d)), "--saveEngine", o])
case(BU, "save-engine-symlink-to-onnx", r"input",
     lambda ws, d: ["--onnx", (o := _copy(ws.bad / "vita_head.onnx", d)), "--saveEngine", _link(Path(o), d, "m.engine")])
case(BU, "save-engine-is-dir", r"folder", lambda ws, d: ["--onnx", ws.p("bad/vita_head.onnx"), "--saveEngine", str(d)])
case(BU, "save-engine-missing", r"saveEngine", lambda ws, d: ["--onnx", ws.p("bad/vita_head.onnx")])
case(BU, "save-engine-with-manifest", r"saveEngine|out-dir",
     lambda ws, d: ["--manifest", ws.p("export/manifest.json"), "--saveEngine", str(d / "x.engine")])
case(BU, "manifest-missing", r"does not exist", lambda ws, d: ["--manifest", str(d / "manifest.json")])
case(BU, "manifest-bad-json", r"manifest", lambda ws, d: ["--manifest", ws.p("bad/exp_bad_json/manifest.json")])
case(BU, "manifest-list", r"manifest", lambda ws, d: ["--manifest", ws.p("bad/exp_manifest_list/manifest.json")])
case(BU, "manifest-precision-lie", r"precision",
     lambda ws, d: ["--manifest", ws.p("bad/exp_precision_lie/manifest.json"), "--out-dir", str(d / "e")])
case(BU, "manifest-io-lie", r"queries|input",
     lambda ws, d: ["--manifest", ws.p("bad/exp_io_lie/manifest.json"), "--out-dir", str(d / "e")])
case(BU, "manifest-dtype-lie", r"float16|dtype",
     lambda ws, d: ["--manifest", ws.p("bad/exp_dtype_lie/manifest.json"), "--out-dir", str(d / "e")])
case(BU, "manifest-truncated-onnx", r"frame_detector\.onnx",
     lambda ws, d: ["--manifest", ws.p("bad/exp_truncated_onnx/manifest.json"), "--out-dir", str(d / "e")])
case(BU, "manifest-missing-onnx", r"vita_head\.onnx",
     lambda ws, d: ["--manifest", ws.p("bad/exp_missing_onnx/manifest.json"), "--out-dir", str(d / "e")])
case(BU, "out-dir-is-file", r"file", lambda ws, d: ["--manifest", ws.p("export/manifest.json"), "--out-dir", ws.p("bad/a_file")])
case(BU, "shapes-garbage", r"shape|minShapes|optShapes",
     lambda ws, d: ["--onnx", ws.p("bad/vita_head.onnx"), "--saveEngine", str(d / "m.engine"), "--optShapes", "garbage"])
case(BU, "shapes-unknown-input", r"nope",
     lambda ws, d: ["--onnx", ws.p("bad/vita_head.onnx"), "--saveEngine", str(d / "m.engine"), "--optShapes", "nope:1x2x3"])
case(BU, "opt-level-9", r"0\.\.5|between 0 and 5|optimization",
     lambda ws, d: ["--onnx", ws.p("bad/vita_head.onnx"), "--saveEngine", str(d / "m.engine"), "--builderOptimizationLevel", "9"])
case(BU, "opt-level-negative", r"0\.\.5|between 0 and 5|optimization",
     lambda ws, d: ["--onnx", ws.p("bad/vita_head.onnx"), "--saveEngine", str(d / "m.engine"), "--builderOptimizationLevel", "-1"])
case(BU, "mem-pool-garbage", r"pool|memPoolSize",
     lambda ws, d: ["--onnx", ws.p("bad/vita_head.onnx"), "--saveEngine", str(d / "m.engine"), "--memPoolSize", "lots"])
case(BU, "compute-capability-text", r"capability|computeCapability",
     lambda ws, d: ["--onnx", ws.p("bad/vita_head.onnx"), "--saveEngine", str(d / "m.engine"), "--computeCapability", "ampere"])
case(BU, "fp16-and-strongly-typed", r"exclude",
     lambda ws, d: ["--onnx", ws.p("bad/vita_head.onnx"), "--saveEngine", str(d / "m.engine"), "--fp16", "--stronglyTyped"])
case(BU, "plugin-missing", r"no\.so|plugin",
     lambda ws, d: ["--onnx", ws.p("bad/vita_head.onnx"), "--saveEngine", str(d / "m.engine"), "--plugins", str(d / "no.so")])
case(BU, "timing-cache-is-onnx", r"input",
     lambda ws, d: ["--onnx", (o := _copy(ws.bad / "vita_head.onnx", d)), "--saveEngine", str(d / "m.engine"), "--timingCacheFile", o])

# verify -----------------------------------------------------------------------------------------------------------
VE = "verify"
case(VE, "export-missing", r"does not exist", lambda ws, d: ["--export", str(d / "none")])
case(VE, "export-empty", r"manifest", lambda ws, d: ["--export", ws.p("bad/exp_empty")])
case(VE, "export-truncated-onnx", r"frame_detector\.onnx", lambda ws, d: ["--export", ws.p("bad/exp_truncated_onnx")])
case(VE, "export-missing-onnx", r"vita_head\.onnx", lambda ws, d: ["--export", ws.p("bad/exp_missing_onnx")])
case(VE, "export-precision-lie", r"precision", lambda ws, d: ["--export", ws.p("bad/exp_precision_lie")])
case(VE, "export-io-lie", r"queries|input", lambda ws, d: ["--export", ws.p("bad/exp_io_lie")])
case(VE, "export-dtype-lie", r"float16|dtype", lambda ws, d: ["--export", ws.p("bad/exp_dtype_lie")])
case(VE, "export-bad-json", r"manifest", lambda ws, d: ["--export", ws.p("bad/exp_bad_json")])
case(VE, "export-no-graphs", r"graphs|manifest", lambda ws, d: ["--export", ws.p("bad/exp_no_graphs")])
case(VE, "export-unknown-deform", r"deform|magic", lambda ws, d: ["--export", ws.p("bad/exp_unknown_deform")])
case(VE, "num-videos-0", r"at least 1", lambda ws, d: ["--export", ws.p("export"), "--videos", ws.p("data"), "--num-videos", "0"])
case(VE, "num-videos-negative", r"at least 1", lambda ws, d: ["--export", ws.p("export"), "--videos", ws.p("data"), "--num-videos", "-1"])
case(VE, "videos-missing", r"does not exist", lambda ws, d: ["--export", ws.p("export"), "--videos", str(d / "none")])
case(VE, "videos-no-valid-json", r"valid\.json", lambda ws, d: ["--export", ws.p("export"), "--videos", ws.p("bad/videos_no_valid")])
case(VE, "videos-bad-valid-json", r"valid\.json", lambda ws, d: ["--export", ws.p("export"), "--videos", ws.p("bad/videos_bad_valid")])
case(VE, "videos-missing-frames", r"JPEGImages|does not exist|cannot read",
     lambda ws, d: ["--export", ws.p("export"), "--videos", ws.p("bad/videos_missing_frames")])
case(VE, "ckpt-not-the-exported", r"sha256|not the checkpoint",
     lambda ws, d: ["--export", ws.p("export"), "--checkpoint", ws.p("bad/missing_key.pth")])
case(VE, "ckpt-garbage", r"garbage\.pth", lambda ws, d: ["--export", ws.p("export"), "--checkpoint", ws.p("bad/garbage.pth")])
case(VE, "ckpt-missing", r"does not exist", lambda ws, d: ["--export", ws.p("export"), "--checkpoint", str(d / "x.pth")])
case(VE, "device-cuda", CUDA_MSG, lambda ws, d: ["--export", ws.p("export"), "--device", "cuda"])
case(VE, "report-is-manifest", r"input",
     lambda ws, d: ["--export", (e := _copy(ws.export, d)), "--report", str(Path(e) / "manifest.json")])
case(VE, "report-is-onnx", r"input",
     lambda ws, d: ["--export", (e := _copy(ws.export, d)), "--report", str(Path(e) / "vita_head.onnx")])
case(VE, "report-is-dir", r"folder", lambda ws, d: ["--export", ws.p("export"), "--report", str(d)])
case(VE, "tensorrt-on-cpu", r"engine|tensorrt|cuda", lambda ws, d: ["--export", ws.p("export"), "--backend", "tensorrt", "--device", "cpu"])

# evaluate ---------------------------------------------------------------------------------------------------------
EV = "evaluate"
case(EV, "gt-missing", r"does not exist", lambda ws, d: ["--gt", str(d / "gt.json"), "--results", ws.p("results.json")])
case(EV, "gt-empty", r"empty|not valid JSON", lambda ws, d: ["--gt", ws.p("bad/empty.json"), "--results", ws.p("results.json")])
case(EV, "gt-list", r"list", lambda ws, d: ["--gt", ws.p("bad/gt_list.json"), "--results", ws.p("results.json")])
case(EV, "gt-no-videos", r"videos", lambda ws, d: ["--gt", ws.p("bad/gt_no_videos.json"), "--results", ws.p("results.json")])
case(EV, "gt-bad-video", r"videos\[0\]", lambda ws, d: ["--gt", ws.p("bad/gt_bad_video.json"), "--results", ws.p("results.json")])
case(EV, "gt-truncated", r"JSON", lambda ws, d: ["--gt", ws.p("bad/gt_truncated.json"), "--results", ws.p("results.json")])
case(EV, "gt-is-dir", r"folder|does not exist", lambda ws, d: ["--gt", str(d), "--results", ws.p("results.json")])
case(EV, "results-missing", r"does not exist", lambda ws, d: ["--gt", ws.p("data/valid.json"), "--results", str(d / "r.json")])
case(EV, "results-empty-file", r"empty|JSON", lambda ws, d: ["--gt", ws.p("data/valid.json"), "--results", ws.p("bad/empty.json")])
case(EV, "results-binary", r"garbage\.bin|JSON", lambda ws, d: ["--gt", ws.p("data/valid.json"), "--results", ws.p("bad/garbage.bin")])
for _name, _expect in {
    "not_json": r"JSON", "dict": r"list", "ints": r"result 0", "video_id_list": r"video_id",
    "video_id_str": r"video_id", "video_id_unknown": r"987654", "video_id_missing": r"video_id",
    "video_id_float": r"video_id", "category_missing": r"category_id", "category_unknown": r"999",
    "category_dict": r"category_id", "score_nan": r"score", "score_inf": r"score", "score_negative": r"score",
    "score_string": r"score", "score_bool": r"score", "score_missing": r"score", "score_null": r"score",
    "segs_missing": r"segmentations", "segs_string": r"segmentations", "segs_short": r"segmentations",
    "segs_long": r"segmentations", "seg_int": r"segmentations\[0\]", "seg_bad_polygon": r"polygon",
    "rle_garbage_counts": r"counts", "rle_counts_wrong_total": r"counts", "rle_counts_list_negative": r"counts",
    "rle_counts_list_sum": r"counts", "rle_counts_list_floats": r"counts", "rle_counts_int": r"counts",
    "rle_size_wrong": r"size", "rle_size_missing": r"size|counts",
}.items():
    case(EV, f"results-{_name}", _expect,
         lambda ws, d, _n=_name: ["--gt", ws.p("data/valid.json"), "--results", ws.p(f"bad/res_{_n}.json")])
case(EV, "out-is-results", r"input",
     lambda ws, d: ["--gt", ws.p("data/valid.json"), "--results", (r := _copy(ws.results, d)), "--out", r])
case(EV, "out-is-gt", r"input",
     lambda ws, d: ["--gt", (g := _copy(ws.gt, d)), "--results", ws.p("results.json"), "--out", g])
case(EV, "out-symlink-to-gt", r"input",
     lambda ws, d: ["--gt", (g := _copy(ws.gt, d)), "--results", ws.p("results.json"), "--out", _link(Path(g), d, "m.json")])
case(EV, "out-is-dir", r"folder", lambda ws, d: ["--gt", ws.p("data/valid.json"), "--results", ws.p("results.json"), "--out", str(d)])
case(EV, "out-unwritable", r"vita_deploy_no_such_dir",
     lambda ws, d: ["--gt", ws.p("data/valid.json"), "--results", ws.p("results.json"), "--out", RO + "/m.json"])

# train ------------------------------------------------------------------------------------------------------------
TR = "train"


def _train(ws: Workspace, d: Path, *extra: str, out: str | None = None, data: str | None = None) -> list[str]:
    base = {"--data": data or ws.p("data"), "--out": out or str(d / "run"), "--iters": "1", "--batch-size": "1",
            "--num-frames": "2", "--eval-every": "0", "--workers": "0", "--num-points": "16", "--log-every": "1",
            "--ckpt-every": "1"}
    keys = {x for x in extra if x.startswith("--")}
    argv = [x for k, v in base.items() if k not in keys for x in (k, v)]
    return argv + list(extra)


case(TR, "data-missing", r"does not exist", lambda ws, d: _train(ws, d, data=str(d / "none")))
case(TR, "data-no-train-json", r"train\.json", lambda ws, d: _train(ws, d, data=ws.p("bad/data_no_json")))
case(TR, "data-bad-train-json", r"train\.json", lambda ws, d: _train(ws, d, data=ws.p("bad/data_bad_json")))
case(TR, "data-is-file", r"file|folder", lambda ws, d: _train(ws, d, data=ws.p("bad/a_file")))
case(TR, "out-existing-run", r"--resume.*--overwrite|--overwrite.*--resume", lambda ws, d: _train(ws, d, out=_run_folder(d)))
case(TR, "out-is-file", r"file", lambda ws, d: _train(ws, d, out=ws.p("bad/a_file")))
case(TR, "out-is-data", r"input|data", lambda ws, d: _train(ws, d, out=(x := _dataset_folder(d, ws)), data=x))
case(TR, "out-inside-data", r"input|data",
     lambda ws, d: _train(ws, d, out=str(Path(x := _dataset_folder(d, ws)) / "train"), data=x))
case(TR, "out-unwritable", r"vita_deploy_no_such_dir", lambda ws, d: _train(ws, d, out=RO))
for _flag, _value, _expect in [("--iters", "0", "at least 1"), ("--iters", "-5", "at least 1"),
                               ("--batch-size", "0", "at least 1"), ("--num-frames", "0", "at least 1"),
                               ("--num-frames", "-2", "at least 1"), ("--lr", "-1", "greater than 0"),
                               ("--lr", "0", "greater than 0"), ("--lr", "nan", "finite"),
                               ("--sampling-frame-range", "-1", "0 or more"), ("--warmup-iters", "-1", "0 or more"),
                               ("--clip-grad", "-1", "0 or more"), ("--num-points", "0", "at least 1"),
                               ("--eval-every", "-1", "0 or more"), ("--eval-videos", "-1", "0 or more"),
                               ("--ckpt-every", "0", "at least 1"), ("--log-every", "0", "at least 1"),
                               ("--workers", "-1", "0 or more"), ("--backbone-lr-mult", "-0.1", "0 or more"),
                               ("--iters", "many", "whole number"), ("--config", "r18", "config"),
                               ("--device", "cuda", CUDA_MSG)]:
    case(TR, f"{_flag[2:]}={_value}", _expect, lambda ws, d, f=_flag, v=_value: _train(ws, d, f, v))
case(TR, "resume-missing", r"does not exist|last\.pth", lambda ws, d: _train(ws, d, "--resume", str(d / "none.pth")))
case(TR, "resume-garbage", r"garbage\.pth", lambda ws, d: _train(ws, d, "--resume", ws.p("bad/garbage.pth")))
case(TR, "resume-auto-no-run", r"last\.pth", lambda ws, d: _train(ws, d, "--resume"))
case(TR, "resume-and-overwrite", r"resume.*overwrite|overwrite.*resume",
     lambda ws, d: _train(ws, d, "--resume", "--overwrite", out=_run_folder(d)))

# data.synthetic ---------------------------------------------------------------------------------------------------
SY = "synthetic"
case(SY, "videos-0", r"at least 1", lambda ws, d: ["--out", str(d / "ds"), "--videos", "0"])
case(SY, "videos-negative", r"at least 1", lambda ws, d: ["--out", str(d / "ds"), "--videos", "-3"])
case(SY, "existing-dataset", r"--overwrite", lambda ws, d: ["--out", _dataset_folder(d, ws), "--videos", "1",
                                                            "--min-frames", "2", "--max-frames", "2"])
case(SY, "existing-dataset-valid", r"--overwrite",
     lambda ws, d: ["--out", _dataset_folder(d, ws), "--split", "valid", "--videos", "1", "--min-frames", "2", "--max-frames", "2"])
case(SY, "out-is-file", r"file", lambda ws, d: ["--out", ws.p("bad/a_file"), "--videos", "1"])
case(SY, "out-unwritable", r"vita_deploy_no_such_dir", lambda ws, d: ["--out", RO, "--videos", "1"])
case(SY, "min-frames-0", r"at least 1|min-frames", lambda ws, d: ["--out", str(d / "ds"), "--videos", "1", "--min-frames", "0"])
case(SY, "min-above-max", r"min-frames", lambda ws, d: ["--out", str(d / "ds"), "--videos", "1", "--min-frames", "9", "--max-frames", "3"])
case(SY, "val-videos-negative", r"0 or more", lambda ws, d: ["--out", str(d / "ds"), "--videos", "1", "--val-videos", "-1"])
case(SY, "split-with-slash", r"split", lambda ws, d: ["--out", str(d / "ds"), "--videos", "1", "--split", "../escape"])
case(SY, "split-empty", r"split", lambda ws, d: ["--out", str(d / "ds"), "--videos", "1", "--split", ""])

# benchmarks -------------------------------------------------------------------------------------------------------
BE = "bench"


def _bench(d: Path, *extra: str) -> list[str]:
    base = {"--config": "tiny", "--resolution": "240p", "--frames": "2", "--repeats": "1", "--warmup": "0",
            "--out": str(d / "b")}
    keys = set(x for x in extra if x.startswith("--"))
    return [x for k, v in base.items() if k not in keys for x in (k, v)] + list(extra)


for _flag, _value, _expect in [("--repeats", "0", "at least 1"), ("--repeats", "-1", "at least 1"),
                               ("--frames", "0", "at least 1"), ("--warmup", "-1", "0 or more"),
                               ("--threads", "0", "at least 1"), ("--device", "cuda", CUDA_MSG),
                               ("--config", "r18", "config"), ("--memory-study", "0", "at least 1")]:
    case(BE, f"{_flag[2:]}={_value}", _expect, lambda ws, d, f=_flag, v=_value: _bench(d, f, v))
case(BE, "export-missing", r"does not exist", lambda ws, d: _bench(d, "--backend", "onnxruntime", "--export", str(d / "none")))
case(BE, "export-precision-lie", r"precision",
     lambda ws, d: _bench(d, "--backend", "onnxruntime", "--precision", "fp16", "--export", ws.p("bad/exp_precision_lie")))
case(BE, "export-truncated-onnx", r"frame_detector\.onnx",
     lambda ws, d: _bench(d, "--backend", "onnxruntime", "--export", ws.p("bad/exp_truncated_onnx")))
case(BE, "ort-without-export", r"export", lambda ws, d: _bench(d, "--backend", "onnxruntime"))
case(BE, "ckpt-garbage", r"garbage\.pth", lambda ws, d: _bench(d, "--checkpoint", ws.p("bad/garbage.pth")))
case(BE, "ckpt-empty", r"empty", lambda ws, d: _bench(d, "--checkpoint", ws.p("bad/empty.pth")))
case(BE, "out-is-dir", r"folder", lambda ws, d: _bench(d, "--out", str(d)))
case(BE, "out-parent-is-file", r"a_file", lambda ws, d: _bench(d, "--out", ws.p("bad/a_file/b")))

BK = "bench_kernels"


def _kernels(d: Path, *extra: str) -> list[str]:
    base = {"--frames": "1", "--precision": "fp32", "--repeats": "1", "--warmup": "0", "--out": str(d / "k"),
            "--peak-gbps": "10"}
    keys = set(x for x in extra if x.startswith("--"))
    return [x for k, v in base.items() if k not in keys for x in (k, v)] + list(extra)


for _flag, _value, _expect in [("--repeats", "0", "at least 1"), ("--frames", "0", "at least 1"),
                               ("--frames", "-6", "at least 1"), ("--warmup", "-1", "0 or more"),
                               ("--threads", "0", "at least 1"), ("--device", "cuda", CUDA_MSG),
                               ("--peak-gbps", "-1", "greater than 0"), ("--peak-gbps", "0", "greater than 0")]:
    case(BK, f"{_flag[2:]}={_value}", _expect, lambda ws, d, f=_flag, v=_value: _kernels(d, f, v))
case(BK, "out-parent-is-file", r"a_file", lambda ws, d: _kernels(d, "--out", ws.p("bad/a_file/k")))

FL = "frame_latency"
for _flag, _value, _expect in [("--frames", "0", "at least 1"), ("--repeats", "0", "at least 1"),
                               ("--threads", "0", "at least 1"), ("--warmup", "-2", "0 or more"),
                               ("--configs", "r18", "r18|config")]:
    case(FL, f"{_flag[2:]}={_value}", _expect,
         lambda ws, d, f=_flag, v=_value: ["--configs", "tiny", "--frames", "2", "--repeats", "1", "--warmup", "0",
                                            "--threads", "1", f, v])

DE = "demo"
case(DE, "videos-0", r"at least 1", lambda ws, d: ["--out", str(d / "demo"), "--videos", "0"])
case(DE, "videos-negative", r"at least 1", lambda ws, d: ["--out", str(d / "demo"), "--videos", "-2"])
case(DE, "render-negative", r"0 or more", lambda ws, d: ["--out", str(d / "demo"), "--videos", "1", "--render", "-1"])
case(DE, "ckpt-missing", r"does not exist", lambda ws, d: ["--out", str(d / "demo"), "--videos", "1", "--checkpoint", str(d / "x.pth")])
case(DE, "ckpt-empty", r"empty", lambda ws, d: ["--out", str(d / "demo"), "--videos", "1", "--checkpoint", ws.p("bad/empty.pth")])
case(DE, "ckpt-garbage", r"garbage\.pth", lambda ws, d: ["--out", str(d / "demo"), "--videos", "1", "--checkpoint", ws.p("bad/garbage.pth")])
case(DE, "ckpt-wrong-keys", r"does not match|keys", lambda ws, d: ["--out", str(d / "demo"), "--videos", "1", "--checkpoint", ws.p("bad/wrongkeys.pth")])
case(DE, "out-is-file", r"file", lambda ws, d: ["--out", ws.p("bad/a_file"), "--videos", "1"])
case(DE, "out-unwritable", r"vita_deploy_no_such_dir", lambda ws, d: ["--out", RO, "--videos", "1"])
case(DE, "out-is-a-dataset", r"--overwrite", lambda ws, d: ["--out", _dataset_folder(d, ws), "--videos", "1"])

# ---- running a case ------------------------------------------------------------------------------------------

_MAINS: dict[str, Callable] = {}


def command_main(cmd: str) -> Callable:
    """The `main` of a command: imported module, or a script loaded from the checkout's root."""
    if cmd not in _MAINS:
        target = COMMANDS[cmd]
        if target.endswith(".py"):
            root = Path(importlib.import_module("vita_deploy").__file__).resolve().parents[1]
            spec = importlib.util.spec_from_file_location(f"_bad_inputs_{cmd}", root / target)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
        else:
            module = importlib.import_module(target)
        _MAINS[cmd] = module.main
    return _MAINS[cmd]


def call_main(cmd: str, argv: list[str]) -> tuple[int, str]:
    """Run a command's main(argv) in this process; returns (exit code, stdout + stderr). An exception that
    escapes main is printed as Python would (traceback) with exit code 1."""
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
        try:
            code = command_main(cmd)(argv)
        except SystemExit as e:
            if isinstance(e.code, str):
                print(e.code, file=sys.stderr)
                code = 1
            else:
                code = e.code or 0
        except Exception:  # noqa: BLE001 - what Python would print for an uncaught exception
            traceback.print_exc()
            code = 1
    return int(code or 0), buf.getvalue()


def hash_inputs(argv: list[str]) -> dict[str, str]:
    """sha256 of every existing file named in argv (or inside a named folder), by path (symlinks resolved)."""
    out: dict[str, str] = {}
    for token in argv:
        p = Path(token)
        if not token or token.startswith("-") or not p.exists():
            continue
        files = [p] if p.is_file() else sorted(f for f in p.rglob("*") if f.is_file())
        for f in files:
            out[str(f.resolve())] = hashlib.sha256(f.read_bytes()).hexdigest()
    return out


def changed_inputs(before: dict, after: dict) -> list[str]:
    """Input files that were modified or removed (new files in an output folder are not a loss)."""
    return sorted(k for k in before if after.get(k) != before[k])


def classify(code: int, output: str, before: dict, after: dict, expect: str) -> str:
    if changed_inputs(before, after):
        return "data loss"
    if "Traceback" in output:
        return "traceback"
    if code == 0:
        return "silently accepted"
    if code == 2 and re.search(expect, output, re.IGNORECASE | re.DOTALL):
        return "clear"
    return f"other (exit {code})"


# ---- pytest ---------------------------------------------------------------------------------------------------

try:
    import pytest
except ImportError:  # the --classify mode needs no pytest
    pytest = None

if pytest is not None:
    @pytest.fixture(scope="session")
    def workspace(tmp_path_factory) -> Workspace:
        from test_export import exported_trained
        return build_workspace(tmp_path_factory.mktemp("bad_inputs"), exported_trained())

    def test_corpus_size() -> None:
        assert len(CASES) >= 150, len(CASES)
        assert len({c.id for c in CASES}) == len(CASES), "case ids must be unique"
        assert {c.cmd for c in CASES} == set(COMMANDS), "every command has cases"

    @pytest.mark.parametrize("c", CASES, ids=[c.id for c in CASES])
    def test_bad_input(c: Case, workspace: Workspace, tmp_path: Path) -> None:
        argv = c.argv(workspace, tmp_path)
        before = hash_inputs(argv)
        start = time.perf_counter()
        code, output = call_main(c.cmd, argv)
        seconds = time.perf_counter() - start
        after = hash_inputs(argv)
        assert not changed_inputs(before, after), f"inputs changed: {changed_inputs(before, after)}"
        assert "Traceback" not in output, output
        assert code == 2, f"exit code {code}\n{output}"
        assert re.search(c.expect, output, re.IGNORECASE | re.DOTALL), \
            f"the message does not name the problem ({c.expect!r}):\n{output}"
        assert seconds < 60, f"took {seconds:.1f} s"

    @pytest.mark.parametrize("cmd,argv,expect", [
        (["-m", "vita_deploy.commands.infer"], lambda ws, d: [(v := _copy(ws.clip, d)), "--json", v], r"input"),
        (["-m", "vita_deploy.commands.evaluate"], lambda ws, d: ["--gt", ws.p("data/valid.json"), "--results",
                                                        ws.p("bad/res_rle_garbage_counts.json")], r"counts"),
        (["engines/build.py"], lambda ws, d: ["--onnx", ws.p("bad/truncated.onnx"), "--saveEngine",
                                              str(d / "m.engine")], r"truncated\.onnx"),
        (["-m", "vita_deploy.commands.train"], lambda ws, d: _train(ws, d, "--iters", "-5"), r"at least 1"),
        (["-m", "vita_deploy.commands.verify"], lambda ws, d: ["--export", ws.p("export"), "--device", "cuda"],
         CUDA_MSG),
    ], ids=["infer-json-is-video", "evaluate-garbage-rle", "build-truncated-onnx", "train-iters", "verify-cuda"])
    def test_exit_code_end_to_end(cmd, argv, expect, workspace: Workspace, tmp_path: Path) -> None:
        """The real process: exit code 2, one error line on stderr, no traceback."""
        args = argv(workspace, tmp_path)
        before = hash_inputs(args)
        root = Path(__file__).resolve().parents[1]
        env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES=os.environ.get("CUDA_VISIBLE_DEVICES", ""))
        r = subprocess.run([sys.executable, *cmd, *args], cwd=root, capture_output=True, text=True, timeout=120,
                           env=env)
        assert r.returncode == 2, r.stdout + r.stderr
        assert "Traceback" not in r.stderr and re.search(expect, r.stderr, re.IGNORECASE)
        assert re.search(r"^(error: |usage: )", r.stderr, re.MULTILINE)
        assert not changed_inputs(before, hash_inputs(args))


    def test_boundary_keeps_the_traceback_of_a_bug(capsys) -> None:
        """A real bug is not dressed up as bad input: traceback, a hint to report it, exit code 1."""
        from vita_deploy.commands.cli import command

        @command
        def buggy(argv):
            return {}["missing"]

        assert buggy([]) == 1
        err = capsys.readouterr().err
        assert "Traceback" in err and "KeyError" in err and "please report it" in err

    def test_atomic_write_keeps_the_old_file_on_failure(tmp_path: Path) -> None:
        from vita_deploy.files import atomic_write

        target = tmp_path / "results.json"
        target.write_text("old")

        def fail(tmp: str) -> None:
            Path(tmp).write_text("half")
            raise OSError(28, "No space left on device", tmp)

        with pytest.raises(OSError):
            atomic_write(target, fail)
        assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]

    def test_refuse_clobber_sees_through_links(tmp_path: Path) -> None:
        from vita_deploy.errors import OutputClobberError
        from vita_deploy.files import refuse_clobber

        video = tmp_path / "clip.mp4"
        video.write_bytes(b"video")
        (tmp_path / "sym.json").symlink_to(video)
        os.link(video, tmp_path / "hard.json")
        for out in ("sym.json", "hard.json", "./clip.mp4"):
            with pytest.raises(OutputClobberError, match="input VIDEO"):
                refuse_clobber({"--json": tmp_path / out}, {"VIDEO": video})
        refuse_clobber({"--json": tmp_path / "new.json"}, {"VIDEO": video})  # a new file is fine

    def test_frame_folders_natural_order_gray_and_16_bit(tmp_path: Path) -> None:
        """1.jpg ... 10.jpg in number order; grayscale and 16-bit PNGs become uint8 RGB (16-bit scaled by 1/257)."""
        from vita_deploy.pipeline.video_io import open_video

        for i in range(1, 11):
            cv2.imwrite(str(tmp_path / f"{i}.png"), np.full((8, 12), i * 257 * 20, np.uint16))
        source = open_video(tmp_path)
        assert [f.name for f in source.frame_files] == [f"{i}.png" for i in range(1, 11)]
        frames = list(source)
        assert all(f.shape == (8, 12, 3) and f.dtype == np.uint8 for f in frames)
        assert [int(f[0, 0, 0]) for f in frames] == [i * 20 for i in range(1, 11)]


# ---- before/after classification of a checkout ----------------------------------------------------------------

def _classify_all(timeout: float = 60.0, only: str = "", workspace: str = "") -> None:
    """Classify every case (or those whose id starts with `only`); `workspace`: reuse/keep the inputs there."""
    import multiprocessing as mp

    ctx = mp.get_context("fork")
    root = Path(tempfile.mkdtemp(prefix="vita_bad_inputs_"))
    t0 = time.perf_counter()
    if workspace and (Path(workspace) / "bad").is_dir():
        ws = Workspace(Path(workspace))
    else:
        ws = build_workspace(Path(workspace) if workspace else root / "ws")
    print(f"workspace built in {time.perf_counter() - t0:.0f} s; vita_deploy from "
          f"{Path(importlib.import_module('vita_deploy').__file__).parent}", flush=True)
    counts: dict[str, int] = {}
    cases = [c for c in CASES if c.id.startswith(only)]
    for i, c in enumerate(cases):
        d = root / "cases" / c.id
        d.mkdir(parents=True)
        argv = c.argv(ws, d)
        before = hash_inputs(argv)
        q = ctx.Queue()
        proc = ctx.Process(target=lambda: q.put(call_main(c.cmd, argv)))
        start = time.perf_counter()
        proc.start()
        proc.join(timeout)
        if proc.is_alive():
            proc.kill()
            proc.join()
            label, detail = "hang", f"> {timeout:.0f} s"
        else:
            code, output = q.get() if not q.empty() else (proc.exitcode, "(no result: the child died)")
            label = classify(code, output, before, hash_inputs(argv), c.expect)
            lines = [x for x in output.strip().splitlines() if x.strip()]
            detail = lines[-1][:150] if lines else ""
        counts[label] = counts.get(label, 0) + 1
        print(f"[{i + 1:3d}/{len(cases)}] {label:18s} {c.id:40s} {time.perf_counter() - start:5.1f}s  {detail}",
              flush=True)
    print(f"\n{len(cases)} cases: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    if "--classify" in sys.argv:
        import argparse

        p = argparse.ArgumentParser()
        p.add_argument("--classify", action="store_true")
        p.add_argument("--only", default="", help="only the cases whose id starts with this")
        p.add_argument("--workspace", default="", help="build the inputs here once and reuse them")
        a = p.parse_args()
        _classify_all(only=a.only, workspace=a.workspace)
    else:
        print(__doc__)
