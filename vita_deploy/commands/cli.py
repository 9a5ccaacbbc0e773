"""The one error boundary of every command, and the argparse types they share.

    from vita_deploy.commands.cli import command

    @command
    def main(argv: list[str] | None = None) -> int: ...

A command's own error types (CheckpointError, VideoReadError, ExportError, EngineBuildError, InputError, ...)
and OS errors on the paths the user gave become `error: <what> (<path>): <how to fix>` on stderr and exit
code 2. Anything else is a bug: its traceback is printed with a one-line hint to report it (exit code 1).
Argument errors are argparse's (`usage: ... error: ...`, exit code 2). The wrapped `main(argv)` always returns
the exit code (it does not raise SystemExit), so in-process callers and `sys.exit(main())` see the same code.
"""
from __future__ import annotations

import argparse
import errno
import functools
import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path

from vita_deploy.errors import InputError

EXIT_USER_ERROR = 2
EXIT_BUG = 1
BUG_HINT = ("this is a bug in vita-deploy, not a problem with your input: please report it with the command line "
            "and the traceback above")

# The project's bad-input error types, by module. Looked up in sys.modules only: an error type can only have
# been raised if its module was imported, so the boundary imports nothing heavy itself.
_ERROR_TYPES = {
    "vita_deploy.errors": ("InputError",),
    "vita_deploy.modeling.checkpoint": ("CheckpointError",),
    "vita_deploy.pipeline.video_io": ("VideoReadError",),
    "vita_deploy.export.onnx_export": ("ExportError",),
    "vita_deploy.engines.errors": ("EngineBuildError",),
    "vita_deploy.runtime.base": ("RuntimeMismatchError",),
    "vita_deploy.evaluation.ytvis_eval": ("YTVISResultsError",),
    "vita_deploy.data.ytvis_json": ("YTVISFormatError",),
    "vita_deploy.pipeline.feature_store": ("FeatureBudgetError",),  # --features keep over --host-budget-mb: a user's choice
}
# OS errors that are about the user's machine or paths whatever file they name.
_USER_ERRNOS = {errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, errno.EDQUOT, errno.ENAMETOOLONG}


def user_error_types() -> tuple[type[BaseException], ...]:
    """The project's bad-input error types among the modules imported so far."""
    types: list[type[BaseException]] = []
    for module, names in _ERROR_TYPES.items():
        mod = sys.modules.get(module)
        if mod is not None:
            types += [getattr(mod, n) for n in names if hasattr(mod, n)]
    return tuple(types)


def _argv_paths(argv: list[str]) -> list[Path]:
    paths = []
    for token in argv:
        value = token.split("=", 1)[1] if token.startswith("--") and "=" in token else token
        if value and not value.startswith("-"):
            paths.append(Path(value))
    return paths


def _is_user_path(filename: str | os.PathLike, argv: list[str]) -> bool:
    """A file the user named, one inside a folder they named, or a sibling of one (an atomic write's temp)."""
    target = Path(os.path.abspath(filename))
    for p in _argv_paths(argv):
        p = Path(os.path.abspath(p))
        if target == p or p in target.parents or target in p.parents or target.parent == p.parent:
            return True
    return False


def os_error_message(e: OSError) -> str:
    """`<what> (<path>): <how to fix>` for an OSError."""
    what = e.strerror or type(e).__name__
    path = e.filename if e.filename is not None else None
    fixes = {
        errno.ENOENT: "check the path; the file or a folder above it does not exist",
        errno.EACCES: "the path is not readable/writable by you: pick another path or fix its permissions",
        errno.EPERM: "the path is not writable by you: pick another path or fix its permissions",
        errno.EROFS: "the folder is on a read-only file system: write somewhere else",
        errno.ENOSPC: "the disk is full: free space or write somewhere else",
        errno.EISDIR: "the path is a folder: pass a file path",
        errno.ENOTDIR: "a part of the path is a file, not a folder: pass another path",
        errno.EEXIST: "the path exists: pass another path",
        errno.ENAMETOOLONG: "the file name is too long: pass a shorter path",
    }
    fix = fixes.get(e.errno, "check the path and its permissions")
    where = f" ({path}" + (f" -> {e.filename2}" if e.filename2 else "") + ")" if path is not None else ""
    return f"{what}{where}: {fix}"


def handle(e: BaseException, argv: list[str]) -> int | None:
    """Print `e` as a user error and return 2, or return None if `e` is a bug."""
    if isinstance(e, user_error_types()):
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    if isinstance(e, ModuleNotFoundError) and e.name:
        print(f"error: the Python package {e.name!r} is not installed ({e}): install it (see README, e.g. "
              "`pip install -e '.[dev]'`) or pick another backend", file=sys.stderr)
        return EXIT_USER_ERROR
    if isinstance(e, OSError) and (e.errno in _USER_ERRNOS
                                   or (e.filename is not None and _is_user_path(e.filename, argv))):
        print(f"error: {os_error_message(e)}", file=sys.stderr)
        return EXIT_USER_ERROR
    return None


def run_main(main: Callable[[list[str] | None], int | None], argv: list[str] | None = None) -> int:
    """Run `main(argv)` inside the error boundary; returns the exit code (argparse's exit becomes its code, 2)."""
    argv_list = list(sys.argv[1:] if argv is None else argv)
    try:
        code = main(argv)  # None stays None: main reads sys.argv itself (benchmarks record the script's command)
    except SystemExit as e:  # argparse (usage already printed), --help, or sys.exit("message")
        if isinstance(e.code, str):
            print(f"error: {e.code}", file=sys.stderr)
            return EXIT_USER_ERROR
        return int(e.code or 0)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - this is the boundary
        code = handle(e, argv_list)
        if code is None:
            traceback.print_exc()
            print(f"error: {BUG_HINT}", file=sys.stderr)
            return EXIT_BUG
        return code
    return int(code or 0)


def command(main: Callable[[list[str] | None], int | None]) -> Callable[[list[str] | None], int]:
    """Decorator: `main(argv)` runs inside the error boundary (see module docstring)."""

    @functools.wraps(main)
    def wrapped(argv: list[str] | None = None, **kwargs) -> int:  # kwargs: e.g. prog="vita-deploy infer"
        return run_main(functools.partial(main, **kwargs) if kwargs else main, argv)

    wrapped.unwrapped = main  # type: ignore[attr-defined]
    return wrapped


# ---- argparse types ---------------------------------------------------------------------------------------------

def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None


def positive_int(text: str) -> int:
    """An int >= 1."""
    value = _int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def nonnegative_int(text: str) -> int:
    """An int >= 0."""
    value = _int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, not {value}")
    return value


def _float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise argparse.ArgumentTypeError(f"must be a finite number, not {text}")
    return value


def positive_float(text: str) -> float:
    """A finite float > 0."""
    value = _float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be greater than 0, not {text}")
    return value


def nonnegative_float(text: str) -> float:
    """A finite float >= 0."""
    value = _float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, not {text}")
    return value


def unit_float(text: str) -> float:
    """A float in [0, 1]."""
    value = _float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, not {text}")
    return value


def existing_file(text: str) -> str:
    """A path to an existing, non-empty regular file (symlinks followed)."""
    p = Path(text)
    if not p.exists():
        raise argparse.ArgumentTypeError(f"{text} does not exist")
    if p.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a folder, not a file")
    if not p.is_file():
        raise argparse.ArgumentTypeError(f"{text} is not a regular file")
    if not os.access(p, os.R_OK):
        raise argparse.ArgumentTypeError(f"{text} is not readable")
    if p.stat().st_size == 0:
        raise argparse.ArgumentTypeError(f"{text} is empty (0 bytes)")
    return text


def existing_dir(text: str) -> str:
    """A path to an existing folder."""
    p = Path(text)
    if not p.exists():
        raise argparse.ArgumentTypeError(f"{text} does not exist")
    if not p.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a file, not a folder")
    return text


def existing_path(text: str) -> str:
    """An existing file or folder (a video file or a frame folder)."""
    p = Path(text)
    if not p.exists():
        raise argparse.ArgumentTypeError(f"{text} does not exist")
    if p.is_file() and p.stat().st_size == 0:
        raise argparse.ArgumentTypeError(f"{text} is empty (0 bytes)")
    return text


def output_file(text: str) -> str:
    """A path a file can be written to: not an existing folder, its nearest existing parent a folder."""
    if not text:
        raise argparse.ArgumentTypeError("the output path is empty")
    p = Path(text)
    if p.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is an existing folder, not a file")
    probe = p.parent
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise argparse.ArgumentTypeError(f"{probe} (a parent of {text}) is a file, not a folder")
    return text


def output_dir(text: str) -> str:
    """A path a folder can be created at: not an existing file, its nearest existing parent a folder."""
    if not text:
        raise argparse.ArgumentTypeError("the output folder path is empty")
    p = Path(text)
    if p.exists() and not p.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is an existing file, not a folder")
    probe = p
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise argparse.ArgumentTypeError(f"{probe} (a parent of {text}) is a file, not a folder")
    return text


def config_name(text: str) -> str:
    """A known model config (vita_deploy.config.config_names())."""
    from vita_deploy.config import config_names

    names = config_names()
    if text not in names:
        raise argparse.ArgumentTypeError(f"unknown config {text!r}: choose one of {', '.join(names)}")
    return text


def config_help() -> str:
    from vita_deploy.config import config_names

    return "model config: " + ", ".join(config_names())


def device(text: str) -> str:
    """A torch device string that this machine has: `cuda` without CUDA is refused in one sentence."""
    import torch

    try:
        dev = torch.device(text)
    except (RuntimeError, ValueError):
        raise argparse.ArgumentTypeError(f"{text!r} is not a device: use cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            why = ("this PyTorch is built without CUDA" if torch.version.cuda is None
                   else "no CUDA GPU is visible (driver missing, or CUDA_VISIBLE_DEVICES hides it)")
            raise argparse.ArgumentTypeError(f"{text} was asked for but {why}: use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise argparse.ArgumentTypeError(f"{text}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif dev.type != "cpu":
        raise argparse.ArgumentTypeError(f"device type {dev.type!r} is not supported: use cpu or cuda")
    return text


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
