"""Quick benchmark runs: the JSON, markdown and plots are written and consistent (no speed thresholds)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


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


def test_bench_kernels_quick_run(tmp_path):
    out = tmp_path / "kernels"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_kernels.py"), "--device", "cpu",
                           "--frames", "1", "--repeats", "1", "--warmup", "0", "--out", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads(out.with_suffix(".json").read_text())["rows"]
    assert {r["implementation"] for r in rows} == {"reference (grid_sample)", "native (Gather)"}
    assert all(r["rel_err_vs_fp64"] < 1e-5 and r["median_ms"] > 0 for r in rows)
