"""benchmarks/gpu_suite.sh: its plan fits the device's limits, and `--rehearse` runs every step of every part at toy
sizes on the CPU in a venv that sees only the GPU image's package set, ending with one archive + one summary per
part (issue 22). The GPU figures themselves come from `--part 1` / `--part 2` on a GPU machine."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import gpu_plan  # noqa: E402

sys.path.remove(str(ROOT / "benchmarks"))


def test_each_part_is_predicted_within_six_minutes_and_runs_no_unavailable_rows():
    minutes = gpu_plan.predicted_minutes()
    assert set(minutes) == {1, 2}
    assert all(0 < m <= 6 for m in minutes.values()), minutes
    names = [s.name for s in gpu_plan.parts()[1]]
    assert names == ["gpu_r50_fp16", "gpu_kernels", "gpu_keep_vs_recompute"]  # the README targets first
    for steps in gpu_plan.parts().values():
        for step in steps:
            argv = " ".join(step.gpu)
            assert "onnxruntime" not in argv and "torch-compile" not in argv  # not runnable on the image / parity
            assert step.predict_s > gpu_plan.FIXED_S
    kernel = next(s for s in gpu_plan.parts()[1] if s.name == "gpu_kernels")
    assert kernel.gpu[kernel.gpu.index("--frames") + 1:kernel.gpu.index("--precision")] == ["1", "6", "18"]
    keep = next(s for s in gpu_plan.parts()[1] if s.name == "gpu_keep_vs_recompute")
    assert "3600" in keep.gpu and keep.gpu[keep.gpu.index("--max-keep-frames") + 1] == "3600"


def test_a_step_that_does_not_fit_the_part_is_skipped_and_the_part_still_packs(tmp_path, monkeypatch):
    step = gpu_plan.Step("too_long", "a figure", [sys.executable + "_never_run"], [], 100.0, "100 s")
    monkeypatch.setattr(gpu_plan, "parts", lambda: {1: [step]})
    rc = gpu_plan.run_part(1, tmp_path / "out", tmp_path / "work", rehearse=False, budget_s=50.0,
                           python=sys.executable)
    assert rc == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["gpu_part1.tar.gz", "gpu_part1_summary.md"]
    assert "| too_long | a figure | skipped | 0 | 100 | predicted 100 s > 50 s left" in \
        (tmp_path / "out" / "gpu_part1_summary.md").read_text()


@pytest.mark.skipif(sys.platform != "linux", reason="the rehearsal mirrors the Linux GPU image (bash, venv)")
def test_rehearsal_runs_every_step_and_packs_each_part(tmp_path):
    env = {**os.environ, "PY": sys.executable, "REHEARSE_DIR": str(tmp_path / "r"),
           "REHEARSE_WHEELS": str(tmp_path / "wheels")}
    env.pop("PYTHONPATH", None)  # the rehearsal sets its own, like the GPU run
    proc = subprocess.run(["bash", "benchmarks/gpu_suite.sh", "--rehearse"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    out = tmp_path / "r" / "out"
    assert sorted(p.name for p in out.iterdir()) == ["gpu_part1.tar.gz", "gpu_part1_summary.md",
                                                     "gpu_part2.tar.gz", "gpu_part2_summary.md"]
    for n, steps in gpu_plan.parts().items():
        summary = (out / f"gpu_part{n}_summary.md").read_text()
        with tarfile.open(out / f"gpu_part{n}.tar.gz") as tar:
            names = tar.getnames()
        for step in steps:
            assert re.search(rf"\| {step.name} \| .* \| ok \| \d+ \| {step.predict_s:.0f} \|", summary), summary
            assert any(x.startswith(f"gpu_part{n}/{step.name}") and x.endswith(".json") for x in names), names
            assert f"gpu_part{n}/{step.name}.log" in names
    # the predicted GPU minutes of each part are printed; the mirror saw the checkout and the carried wheel only
    for n, minutes in gpu_plan.predicted_minutes().items():
        assert f"part {n}: predicted {minutes:.1f} min" in proc.stdout
    assert "set-up ok" in proc.stdout and f"vita_deploy from {ROOT}" in proc.stdout
    mirrored = (tmp_path / "r" / "mirrored.txt").read_text().lower()
    assert "torch==" in mirrored and "pytest" not in mirrored and "pycocotools" not in mirrored
    assert list((tmp_path / "r" / "site").glob("pycocotools*"))
