"""The `vita-deploy` dispatcher (vita_deploy/__main__.py): the workflow in order in --help, --version, every
subcommand reaches its command's parser under its new name, an unknown one exits 2, nothing heavy is imported
before a subcommand is chosen; the old entry points (shims, `-m` modules) still work."""
from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from vita_deploy import __version__
from vita_deploy.__main__ import COMMANDS, main

ROOT = Path(__file__).resolve().parents[1]
WORKFLOW = ["data", "train", "evaluate", "export", "build", "infer", "verify", "bench", "serve", "batch", "demo"]


def call(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


def test_help_lists_the_workflow_in_order_without_importing_torch() -> None:
    """A fresh interpreter: `python -m vita_deploy --help` prints one line per command, in workflow order, and
    has not imported torch (or anything of the commands) by then."""
    code = ("import runpy, sys; sys.argv = ['vita-deploy', '--help']\n"
            "try: runpy.run_module('vita_deploy', run_name='__main__')\n"
            "except SystemExit as e: print('exit', e.code)\n"
            "light = {'vita_deploy', 'vita_deploy.__main__', 'vita_deploy.commands', 'vita_deploy.commands.cli',\n"
            "         'vita_deploy.errors'}\n"
            "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'numpy', 'onnx', 'cv2') "
            "or m.startswith('vita_deploy') and m not in light)\n"
            "print('heavy', heavy)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith("usage: vita-deploy")
    listed = lines.index("commands, in workflow order:")
    rows = [line.split() for line in lines[listed + 1: listed + 1 + len(WORKFLOW)]]
    assert [row[0] for row in rows] == WORKFLOW and all(len(row) > 2 for row in rows)  # name + a line of help
    assert lines[-2:] == ["exit 0", "heavy []"]


def test_version() -> None:
    from importlib.metadata import PackageNotFoundError, version

    code, out, _ = call(["--version"])
    try:
        expected = version("vita-deploy")
    except PackageNotFoundError:
        expected = __version__
    assert code == 0 and out.split() == ["vita-deploy", expected]


@pytest.mark.parametrize("name", WORKFLOW)
def test_subcommand_help_names_the_new_spelling(name: str) -> None:
    code, out, err = call([name, "--help"])
    assert code == 0, err
    assert out.startswith(f"usage: vita-deploy {name} "), out[:200]


def test_every_command_module_is_listed() -> None:
    assert [name for name, _, _ in COMMANDS] == WORKFLOW


@pytest.mark.parametrize("argv", [["segment", "video.mp4"], ["Infer"], []], ids=["unknown", "case", "none"])
def test_unknown_or_missing_subcommand_exits_2(argv: list[str]) -> None:
    code, out, err = call(argv)
    assert code == 2 and out == ""
    assert err.startswith("usage: vita-deploy") and "vita-deploy: error: " in err


def test_arguments_reach_the_command(tmp_path: Path) -> None:
    """`vita-deploy data ...` runs data/synthetic.py's main with the flags given: a one-video dataset."""
    code, out, err = call(["data", "--out", str(tmp_path / "d"), "--videos", "1", "--min-frames", "2",
                           "--max-frames", "2", "--seed", "3"])
    assert code == 0, err
    train = json.loads((tmp_path / "d" / "train.json").read_text())
    assert len(train["videos"]) == 1 and train["videos"][0]["length"] == 2
    code, _, err = call(["data", "--out", str(tmp_path / "d"), "--videos", "0"])  # the command's own check
    assert code == 2 and err.startswith("usage: vita-deploy data")


@pytest.mark.parametrize("argv, prog", [
    (["engines/build.py", "--help"], "engines/build.py"),
    (["export/to_onnx.py", "--help"], "export/to_onnx.py"),
    (["-m", "vita_deploy.commands.infer", "--help"], "python -m vita_deploy.commands.infer"),
])
def test_old_entry_points_still_work(argv: list[str], prog: str) -> None:
    env = dict(os.environ, PYTHONPATH=str(ROOT))  # a checkout run without installing (the scripts' own case)
    r = subprocess.run([sys.executable, *argv], capture_output=True, text=True, timeout=120, cwd=ROOT, env=env)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"usage: {prog} ")
