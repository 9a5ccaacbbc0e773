"""Quick benchmark runs: the JSON, markdown and plots are written and consistent (no speed thresholds)."""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from test_export import exported

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import bench  # noqa: E402


def test_bench_quick_run_is_consistent(tmp_path):
    out = tmp_path / "quick"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench.py"), "--config", "tiny", "--frames", "6",
                           "--resolution", "240p", "--repeats", "1", "--warmup", "0", "--out", str(out),
                           "--memory-study", "12", "24"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads(out.with_suffix(".json").read_text())
    assert data["environment"]["torch"] and "bench.py" in data["environment"]["command"]
    (result,) = data["results"]
    stages = sum(v["median"] for v in result["stages_s"].values())
    assert 0 < stages <= result["end_to_end_s"]["median"] * 1.001  # stages are parts of the whole
    assert result["fps"]["end_to_end"] == 6 / result["end_to_end_s"]["median"]
    assert [r["frames"] for r in data["memory_study"]] == [12, 24]
    assert all(r["streaming_host_peak_mb"] > 0 for r in data["memory_study"])
    markdown = out.with_suffix(".md").read_text()
    assert "| tiny | torch | fp32 |" in markdown
    for row in data["memory_study"]:  # the memory table repeats the JSON's figures
        assert f"| {row['frames']} | {row['streaming_host_peak_mb']:.0f} |" in markdown
    for png in (tmp_path / "quick_fps.png", tmp_path / "quick_memory.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_streaming_quick_run_with_render(tmp_path):
    out = tmp_path / "stream"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_streaming.py"), "--config", "tiny",
                           "--device", "cpu", "--frames", "7", "--features", "keep", "recompute", "--render",
                           "--resolution", "240p", "--warmup-frames", "0", "--out", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = json.loads(out.with_suffix(".json").read_text())["runs"]
    assert [(r["features"], r["recomputed"]) for r in runs] == [("keep", False), ("recompute", True)]
    for r in runs:  # the render is timed apart: the wall time per frame holds inference and render
        assert r["render_ms_per_frame"] > 0 and r["disk_mb"] == 0
        assert r["wall_ms_per_frame"] >= r["ms_per_frame"] and r["wall_ms_per_frame"] >= r["render_ms_per_frame"]
    markdown = out.with_suffix(".md").read_text()
    assert "With --render" in markdown
    assert f"| {runs[1]['render_ms_per_frame']:.1f} | {runs[1]['wall_ms_per_frame']:.1f} |" in markdown


def test_bench_kernels_quick_run(tmp_path):
    out = tmp_path / "kernels"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_kernels.py"), "--device", "cpu",
                           "--frames", "1", "--repeats", "1", "--warmup", "0", "--out", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads(out.with_suffix(".json").read_text())
    rows = data["rows"]
    assert {r["implementation"] for r in rows} == {"reference (grid_sample)", "native (Gather)"}
    assert all(r["rel_err_vs_fp64"] < 1e-5 and r["median_ms"] > 0 for r in rows)
    assert data["peak_gbps"] > 0 and data["peak_gbps_source"].startswith("measured")
    for r in rows:  # share of the bandwidth floor: bytes that must move / bandwidth, over the time taken
        assert abs(r["pct_of_floor"] - 100 * r["gbps"] / data["peak_gbps"]) < 1e-9
        assert abs(r["roofline_floor_ms"] - 1000 * r["bytes_moved"] / (data["roofline_gbps"] * 1e9)) < 1e-12
        assert f"| {r['median_ms']:.3f} | {r['gbps']:.2f} | {r['pct_of_floor']:.2f} | " \
            f"{r['roofline_floor_ms']:.4f} |" in out.with_suffix(".md").read_text()
    if importlib.util.find_spec("triton") is not None:  # our kernel: a correctness run in the interpreter, no time
        checks = {c["precision"]: c for c in data["interpreter_correctness"]}
        assert set(checks) == {"fp32", "fp16"} and all("median_ms" not in c for c in checks.values())
        assert checks["fp32"]["rel_err_vs_fp64"] < 1e-5
        assert checks["fp16"]["rel_err_vs_exact_on_rounded_inputs"] < 1e-3
        assert "correctness run in Triton's CPU interpreter (not a speed figure)" in out.with_suffix(".md").read_text()


def test_exported_backends_run_the_export_of_each_precision(tmp_path):
    fp32, fp16 = exported("tiny"), exported("tiny", precision="fp16")
    out = tmp_path / "ort"
    assert bench.main(["--config", "tiny", "--backend", "onnxruntime", "--precision", "fp32", "fp16", "--export",
                       str(fp16), str(fp32), "--frames", "3", "--resolution", "240p", "--repeats", "1",
                       "--warmup", "0", "--device", "cpu", "--out", str(out)]) == 0
    rows = json.loads(out.with_suffix(".json").read_text())["results"]
    assert {(r["precision"], r["extra"]["export"]) for r in rows} == {("fp32", str(fp32)), ("fp16", str(fp16))}


def test_eager_fp16_on_the_cpu_is_listed_as_not_run(tmp_path):
    out = tmp_path / "eager"
    assert bench.main(["--config", "tiny", "--backend", "torch", "--precision", "fp32", "fp16", "--device", "cpu",
                       "--frames", "3", "--resolution", "240p", "--repeats", "1", "--warmup", "0",
                       "--out", str(out)]) == 0
    data = json.loads(out.with_suffix(".json").read_text())
    assert [r["precision"] for r in data["results"]] == ["fp32"]  # CPU autocast is off: fp16 would be fp32
    (skip,) = data["not_run"]
    assert (skip["backend"], skip["precision"]) == ("torch", "fp16") and "CUDA autocast" in skip["reason"]
    assert f"Not run: torch fp16 on cpu: {skip['reason']}." in out.with_suffix(".md").read_text()


@pytest.mark.parametrize("args, message", [
    (["--backend", "onnxruntime", "--precision", "fp16"], "needs an fp16 export"),
    (["--backend", "onnxruntime", "--config", "r50"], "holds the 'tiny' model"),
])
def test_runs_that_would_be_mislabelled_are_refused(args, message, tmp_path, capsys):
    argv = ["--export", str(exported("tiny")), "--out", str(tmp_path / "x"), *args]
    assert bench.main(argv if "--config" in args else ["--config", "tiny", *argv]) == 2
    assert message in capsys.readouterr().err
    assert not list(tmp_path.iterdir())  # refused before anything ran or was written
