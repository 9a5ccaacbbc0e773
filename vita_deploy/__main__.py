"""`vita-deploy <command> ...` (also `python -m vita_deploy <command> ...`): one command over the whole workflow.

Each subcommand is the `main(argv, prog)` of its command module, with the flags it has always had; the module is
imported only once its subcommand is chosen, so `vita-deploy --help` stays fast (no torch import).
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

# (name, module of its main, one line of help), in workflow order.
COMMANDS: tuple[tuple[str, str, str], ...] = (
    ("data", "vita_deploy.commands.data", "write a synthetic YouTube-VIS dataset (train/valid splits)"),
    ("train", "vita_deploy.commands.train", "train VITA on a YouTube-VIS folder (or --resume a run)"),
    ("evaluate", "vita_deploy.commands.evaluate", "YouTube-VIS AP of a results JSON against the ground truth"),
    ("export", "vita_deploy.commands.export", "export the model's graphs to ONNX (manifest.json with shapes)"),
    ("build", "vita_deploy.commands.build", "build TensorRT engines from ONNX (trtexec flags: --onnx, --manifest)"),
    ("infer", "vita_deploy.commands.infer", "segment a video: YouTube-VIS JSON and a rendered mp4"),
    ("verify", "vita_deploy.commands.verify", "check an export's / engines' outputs against the eager PyTorch model"),
    ("bench", "benchmarks/bench.py", "fps and latency per stage and backend (from a source checkout)"),
    ("serve", "vita_deploy.commands.serve", "serve an export behind NVIDIA Triton Inference Server"),
    ("batch", "vita_deploy.commands.batch", "segment many videos on a Ray cluster"),
    ("demo", "vita_deploy.commands.demo", "the whole job on the shipped tiny model and synthetic videos"),
)
PROG = "vita-deploy"


def version() -> str:
    """The installed distribution's version, else (a source tree on sys.path) the package's."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    try:
        return dist_version("vita-deploy")
    except PackageNotFoundError:
        from vita_deploy import __version__

        return __version__


def build_parser() -> argparse.ArgumentParser:
    width = max(len(name) for name, _, _ in COMMANDS)
    workflow = "\n".join(f"  {name:<{width}}  {text}" for name, _, text in COMMANDS)
    p = argparse.ArgumentParser(
        prog=PROG, formatter_class=argparse.RawDescriptionHelpFormatter,
        usage=f"{PROG} [-h] [--version] <command> [<args>]",
        description="VITA video instance segmentation from PyTorch to ONNX and TensorRT.",
        epilog=f"commands, in workflow order:\n{workflow}\n\n`{PROG} <command> --help` shows a command's flags.")
    p.add_argument("--version", action="version", version=f"{PROG} {version()}")
    p.add_argument("command", metavar="<command>", choices=[name for name, _, _ in COMMANDS],
                   help="the command to run (listed below)")
    return p


def bench_main() -> Callable[..., int]:
    """benchmarks/bench.py's main: the benchmarks live in the source checkout, next to their results."""
    import importlib.util

    import vita_deploy

    script = Path(vita_deploy.__file__).resolve().parents[1] / "benchmarks" / "bench.py"
    if not script.is_file():
        from vita_deploy.errors import InputError

        raise InputError("`vita-deploy bench` runs the benchmarks of a source checkout (benchmarks/bench.py), and "
                         "this vita-deploy is installed without one", script,
                         "clone the repository, `pip install -e .` in it and run `vita-deploy bench` (or "
                         "`python benchmarks/bench.py`) there")
    spec = importlib.util.spec_from_file_location("vita_deploy_bench_script", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def command_main(name: str) -> Callable[..., int]:
    """The `main(argv, prog=...)` of subcommand `name` (imports its module now)."""
    import importlib

    module = dict((n, m) for n, m, _ in COMMANDS)[name]
    return bench_main() if name == "bench" else importlib.import_module(module).main


def _dispatch(argv: list[str] | None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if not argv or argv[0].startswith("-"):  # --help, --version, or no command: argparse prints and exits
        parser.parse_args(argv[:1])
        parser.error("the following arguments are required: <command>")
    parser.parse_args(argv[:1])  # an unknown command: `invalid choice`, exit 2
    name, rest = argv[0], argv[1:]
    return command_main(name)(rest, prog=f"{PROG} {name}")


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `vita-deploy` console script; returns the exit code (argparse's exits included)."""
    from vita_deploy.commands.cli import run_main

    return run_main(_dispatch, argv)


if __name__ == "__main__":
    sys.exit(main())
