"""Issue 23 item 5, defects a new user met: a 1x1 video rendered to mp4, outputs that cannot be written (the
message names the user's path, never the hidden temporary file), --features keep over --host-budget-mb, and the
mode of every output (the umask's, mp4s included)."""
from __future__ import annotations

import json
import os
import stat

import cv2
import numpy as np
import pytest

from vita_deploy.commands import infer
from vita_deploy.files import atomic_write_text

UNWRITABLE = "/proc"  # no file can be created there on any Linux machine


def write_avi(path, frames: int, h: int, w: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (w, h))
    assert writer.isOpened()
    for _ in range(frames):
        writer.write(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
    writer.release()


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    path = tmp_path_factory.mktemp("clips") / "clip.avi"
    write_avi(path, 3, 64, 96)
    return path


def run(argv, capsys) -> tuple[int, str]:
    code = infer.main(argv)
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def test_one_pixel_video_to_mp4_is_a_clear_error(tmp_path, capsys):
    video = tmp_path / "one_pixel.avi"
    write_avi(video, 3, 1, 1)
    code, text = run([str(video), "--config", "tiny", "--device", "cpu", "--json", str(tmp_path / "r.json"),
                      "--out", str(tmp_path / "o.mp4")], capsys)
    assert code == 2, text
    assert "Traceback" not in text and "1x1" in text and str(tmp_path / "o.mp4") in text and "--out" in text
    assert not any(p.name.startswith(".o.mp4") for p in tmp_path.iterdir())  # no temporary file left behind


def test_atomic_write_error_names_the_users_path():
    with pytest.raises(OSError) as e:
        atomic_write_text(f"{UNWRITABLE}/x.json", "{}")
    assert e.value.filename == f"{UNWRITABLE}/x.json"


@pytest.mark.parametrize("flag,name", [("--out", "x.mp4"), ("--json", "x.json")])
def test_unwritable_output_names_the_users_path(clip, tmp_path, capsys, flag, name):
    argv = [str(clip), "--config", "tiny", "--device", "cpu", "--json", str(tmp_path / "r.json"),
            flag, f"{UNWRITABLE}/{name}"]
    code, text = run(argv, capsys)
    assert code == 2, text
    assert f"({UNWRITABLE}/{name})" in text and f".{name}" not in text and "Traceback" not in text


def test_evaluate_unwritable_report_names_the_users_path(tmp_path, capsys):
    from vita_deploy.commands import evaluate

    gt = {"videos": [{"id": 1, "width": 4, "height": 4, "length": 1, "file_names": ["a.jpg"]}],
          "categories": [{"id": 1, "name": "a"}],
          "annotations": [{"id": 1, "video_id": 1, "category_id": 1, "iscrowd": 0, "areas": [1.0],
                           "bboxes": [[0, 0, 1, 1]], "segmentations": [{"size": [4, 4], "counts": "0111;"}]}]}
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "res.json").write_text("[]")
    code = evaluate.main(["--gt", str(tmp_path / "gt.json"), "--results", str(tmp_path / "res.json"),
                          "--out", f"{UNWRITABLE}/m.json"])
    text = "".join(capsys.readouterr())
    assert code == 2 and f"({UNWRITABLE}/m.json)" in text and ".m.json." not in text, text


def test_features_keep_over_the_host_budget_is_one_user_error_line(clip, tmp_path, capsys):
    code, text = run([str(clip), "--config", "tiny", "--device", "cpu", "--json", str(tmp_path / "r.json"),
                      "--features", "keep", "--host-budget-mb", "0.001"], capsys)
    assert code == 2, text
    errors = [line[line.index("error:"):] for line in text.splitlines() if "error:" in line]  # after tqdm's \r
    assert len(errors) == 1 and "Traceback" not in text and "bug" not in text, text
    assert all(s in errors[0] for s in ("--features recompute|auto", "--host-budget-mb", "--spill-dir"))


@pytest.mark.parametrize("umask", [0o022, 0o002])
def test_every_output_gets_the_umask_mode(clip, tmp_path, capsys, umask):
    old = os.umask(umask)
    try:
        code, text = run([str(clip), "--config", "tiny", "--device", "cpu", "--json", str(tmp_path / "r.json"),
                          "--out", str(tmp_path / "o.mp4")], capsys)
    finally:
        os.umask(old)
    assert code == 0, text
    for name in ("r.json", "o.mp4"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o666 & ~umask, name
