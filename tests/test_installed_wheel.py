"""The project as a user gets it: the wheel, installed into a fresh venv outside the checkout, runs the workflow
through the `vita-deploy` command from an empty folder: data -> export (tiny, native) -> build --manifest
(TensorRT-RTX, ahead of time) -> infer (ONNX Runtime, on a clip this test writes) -> verify.

The new venv takes its dependencies (torch, onnxruntime, ...) from this test venv's site-packages through a .pth
file that lists those folders as plain paths: Python then does not run the test venv's own .pth files, so the
editable install of the checkout is not visible there (checked: `vita_deploy` comes from the wheel, no checkout
file is on sys.path, no editable finder is installed).
"""
from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

CHECK_ENV = r"""
import json, sys, importlib.metadata
import vita_deploy
print(json.dumps({"file": vita_deploy.__file__, "path": sys.path,
                  "finders": [getattr(f, "__name__", type(f).__name__) for f in sys.meta_path],
                  "version": importlib.metadata.version("vita-deploy")}))
"""


def dependency_dirs() -> list[Path]:
    """This interpreter's site-packages folders (where the test venv's dependencies are installed)."""
    dirs = [sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"], *site.getsitepackages()]
    return list(dict.fromkeys(Path(d).resolve() for d in dirs if Path(d).is_dir()))


def run(cmd: list[str], cwd: Path, env: dict, timeout: float = 600) -> subprocess.CompletedProcess:
    r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    print(f"$ {' '.join(map(str, cmd))}  -> {r.returncode}\n{r.stdout[-3000:]}{r.stderr[-3000:]}")
    return r


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> dict:
    """Build the wheel from a copy of the package's files, install it into a fresh venv; returns the venv's
    paths, the environment for its commands and an empty working folder."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"  # a copy: the build writes build/ and *.egg-info next to pyproject.toml
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "vita_deploy", src / "vita_deploy", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    host_env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP")}
    r = run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
             "-w", str(tmp / "dist"), str(src)], tmp, host_env)
    assert r.returncode == 0
    (wheel,) = (tmp / "dist").glob("vita_deploy-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "vita_deploy/assets/vita_tiny_synthetic.pth" in names and "vita_deploy/commands/build.py" in names
    assert not any(n.startswith(("tests/", "benchmarks/", "engines/", "export/")) for n in names), names

    venv = tmp / "venv"
    assert run([sys.executable, "-m", "venv", "--without-pip", str(venv)], tmp, host_env).returncode == 0
    python = venv / "bin" / "python"
    # The wheel first, into a venv that sees nothing else: pip must not meet the test venv's vita-deploy.
    r = run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index", "-q",
             str(wheel)], tmp, host_env)
    assert r.returncode == 0
    venv_site = Path(run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], tmp,
                         host_env).stdout.strip())
    deps = dependency_dirs()
    (venv_site / "test_venv_dependencies.pth").write_text("".join(f"{d}\n" for d in deps))

    work = tmp / "work"  # the user's empty folder
    work.mkdir()
    env = dict(host_env, PATH=f"{venv / 'bin'}{os.pathsep}{host_env.get('PATH', '')}", OMP_NUM_THREADS="1",
               CUDA_VISIBLE_DEVICES="")
    return {"venv": venv, "python": python, "exe": str(venv / "bin" / "vita-deploy"), "deps": deps, "env": env,
            "work": work, "wheel": wheel}


def test_the_installed_package_is_the_wheel(installed) -> None:
    r = run([str(installed["python"]), "-c", CHECK_ENV], installed["work"], installed["env"])
    assert r.returncode == 0
    info = json.loads(r.stdout)
    venv = installed["venv"].resolve()
    assert Path(info["file"]).resolve().is_relative_to(venv), info["file"]
    assert not any("Editable" in f for f in info["finders"]), info["finders"]
    for entry in info["path"]:
        p = Path(entry or installed["work"]).resolve()
        # The test venv may live inside the checkout (CI: .venv in the clone); nothing else of it may be visible.
        assert not p.is_relative_to(ROOT) or any(p.is_relative_to(d) for d in installed["deps"]), entry
    r = run([installed["exe"], "--version"], installed["work"], installed["env"])
    assert r.returncode == 0 and r.stdout.split() == ["vita-deploy", info["version"]]
    assert installed["wheel"].name.startswith(f"vita_deploy-{info['version']}-")


def test_bench_needs_a_checkout(installed) -> None:
    """benchmarks/ is not in the wheel: one error line and exit 2, not a traceback."""
    r = run([installed["exe"], "bench", "--help"], installed["work"], installed["env"])
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.startswith("error: ") and len(r.stderr.strip().splitlines()) == 1


def write_clip(path: Path, frames: int = 6, height: int = 96, width: int = 128) -> None:
    """A short mp4: two coloured shapes moving over a grey background."""
    import cv2
    import numpy as np

    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (width, height))
    assert writer.isOpened()
    for t in range(frames):
        img = np.full((height, width, 3), 110, np.uint8)
        cv2.circle(img, (24 + 8 * t, 40), 14, (40, 200, 60), -1)
        cv2.rectangle(img, (80 - 4 * t, 50), (110 - 4 * t, 80), (200, 60, 40), -1)
        writer.write(img)
    writer.release()


@pytest.fixture(scope="module")
def exported(installed) -> Path:
    """`vita-deploy data` (a one-video valid split) and `vita-deploy export` (tiny, native) in the user's folder."""
    exe, work, env = installed["exe"], installed["work"], installed["env"]
    r = run([exe, "data", "--out", "data", "--videos", "1", "--val-videos", "1", "--min-frames", "3",
             "--max-frames", "4"], work, env)
    assert r.returncode == 0
    valid = json.loads((work / "data" / "valid.json").read_text())
    assert len(valid["videos"]) == 1 and valid["annotations"]
    # Two graphs (the mask-feature graph of recompute mode is tested in tests/test_streaming.py): half the time.
    r = run([exe, "export", "--config", "tiny", "--deform-attn", "native", "--max-frames", "16", "--graphs",
             "frame_detector", "vita_head", "--out-dir", "export"], work, env)
    assert r.returncode == 0
    return work / "export"


def test_export(exported) -> None:
    manifest = json.loads((exported / "manifest.json").read_text())
    assert manifest["deform_attn"] == "native" and manifest["config"]["name"] == "tiny"
    assert set(manifest["graphs"]) == {"frame_detector", "vita_head"}
    for graph, info in manifest["graphs"].items():
        assert (exported / info["file"]).stat().st_size == info["size_bytes"] > 10_000, graph


def test_build_manifest(installed, exported) -> None:
    """TensorRT-RTX builds the export's engines ahead of time (SM89) on this GPU-less machine."""
    pytest.importorskip("tensorrt_rtx_bindings", reason="TensorRT-RTX is not installed: `pip install -e .[dev]` "
                        "installs tensorrt-rtx-cu13-libs/-bindings")
    r = run([installed["exe"], "build", "--manifest", "export/manifest.json", "--out-dir", "engines"],
            installed["work"], installed["env"])
    assert r.returncode == 0
    manifest = json.loads((exported / "manifest.json").read_text())
    for graph, info in manifest["graphs"].items():
        engine = installed["work"] / "engines" / f"{Path(info['file']).stem}.engine"
        sidecar = json.loads(Path(f"{engine}.json").read_text())
        assert engine.stat().st_size == sidecar["engine_bytes"] > 10_000, graph
        assert sidecar["onnx_sha256"] == info["sha256"] and sidecar["target"].startswith("SM89")


def test_infer_onnxruntime(installed, exported) -> None:
    work = installed["work"]
    write_clip(work / "clip.mp4")
    r = run([installed["exe"], "infer", "clip.mp4", "--backend", "onnxruntime", "--export", "export", "--device",
             "cpu", "--json", "results.json", "--out", "clip_vita.mp4"], work, installed["env"])
    assert r.returncode == 0
    results = json.loads((work / "results.json").read_text())
    assert results and all(x["video_id"] == 1 and len(x["segmentations"]) == 6 for x in results)
    assert (work / "clip_vita.mp4").stat().st_size > 0


def test_verify(installed, exported) -> None:
    r = run([installed["exe"], "verify", "--export", "export", "--backend", "onnxruntime", "--device", "cpu",
             "--videos", "data", "--num-videos", "1", "--report", "parity.json"], installed["work"], installed["env"])
    assert r.returncode == 0
    report = json.loads((installed["work"] / "parity.json").read_text())
    assert report["backend"] == "onnxruntime" and report["precision"] == "fp32"
    graphs = {name.split()[0] for name in report["tensors"]}
    assert graphs == {"frame_detector", "vita_head"}
    assert all(t["rel"] < report["thresholds"]["tensor_rel"] for t in report["tensors"].values())
    assert report["video"]["videos"] == 1
