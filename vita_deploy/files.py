"""File utilities shared by every room: atomic writes, sha256, and the no-clobber checks for outputs.

Every output is written through `atomic_write` (temp file in the same folder, then rename), so a failure
leaves the old file intact. Before writing, a command calls `refuse_clobber(outputs, inputs)` (no output may
resolve, through symlinks or hard links, to one of its inputs) and, for run/dataset folders,
`prepare_output_dir(path, resume=..., overwrite=...)`.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from vita_deploy.errors import OutputClobberError

PathLike = str | Path


def umask_mode(executable: bool = False) -> int:
    """The mode a new file gets under the current umask (0o666, or 0o777 for executables, minus the umask)."""
    umask = os.umask(0)
    os.umask(umask)
    return (0o777 if executable else 0o666) & ~umask


def temp_file_for(path: PathLike, suffix: str = ".tmp") -> str:
    """A new empty hidden file next to `path` (same folder, so a rename onto `path` is atomic).

    An OSError names `path`, the file the user asked for, not the hidden temporary name."""
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    except OSError as e:
        raise OSError(e.errno, e.strerror, str(path)) from None
    os.close(fd)
    return tmp


def publish(tmp: PathLike, path: PathLike) -> Path:
    """Give the finished temporary file `tmp` the umask's mode (mkstemp makes 0600) and rename it onto `path`;
    an OSError names `path`."""
    try:
        os.chmod(tmp, umask_mode())
        os.replace(tmp, path)
    except OSError as e:
        raise OSError(e.errno, e.strerror, str(path)) from None
    return Path(path)


def atomic_write(path: PathLike, write: Callable[[str], Any]) -> Path:
    """Call write(tmp_path) then rename onto `path`, so a crash never leaves a half-written file.

    The temp file lives in `path`'s folder (the rename is atomic there); it gets the usual umask permissions.
    OSErrors name `path` (what the user gave), never the hidden temporary file.
    """
    path = Path(path)
    if path.is_dir():
        raise OutputClobberError("the output is an existing folder, not a file", path,
                                 "pass a file name (e.g. inside that folder)")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OSError(e.errno, e.strerror, str(path)) from None
    tmp = temp_file_for(path)
    try:
        try:
            write(tmp)
        except OSError as e:
            if e.filename is not None and os.fspath(e.filename) == tmp:
                raise OSError(e.errno, e.strerror, str(path)) from None
            raise
        publish(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def atomic_write_text(path: PathLike, text: str) -> Path:
    """atomic_write of a text file (utf-8)."""
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def atomic_write_bytes(path: PathLike, data: bytes) -> Path:
    return atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))


def file_sha256(path: PathLike) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def same_file(a: PathLike, b: PathLike) -> bool:
    """True when `a` and `b` name the same file: equal after resolving symlinks, or the same inode."""
    a, b = Path(a), Path(b)
    if a.resolve() == b.resolve():
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
        return True
    except ValueError:
        return False


def refuse_clobber(outputs: Mapping[str, PathLike | None], inputs: Mapping[str, PathLike | Iterable[PathLike] | None]
                   ) -> None:
    """Raise OutputClobberError if an output names one of the inputs (or a file inside an input folder that the
    command reads, e.g. a frame of a frame folder) or two outputs name the same file.

    outputs/inputs: flag or role (e.g. "--json", "video") -> path; None entries are skipped. An input may be a
    list of paths (the files of a frame folder).
    """
    flat_inputs: list[tuple[str, Path]] = []
    for role, value in inputs.items():
        if value is None:
            continue
        values = [value] if isinstance(value, (str, Path)) else list(value)
        flat_inputs += [(role, Path(v)) for v in values]
    seen: list[tuple[str, Path]] = []
    for role, out in outputs.items():
        if out is None:
            continue
        out = Path(out)
        for in_role, inp in flat_inputs:
            if same_file(out, inp):
                raise OutputClobberError(
                    f"the output {role} {out} is the input {in_role} {inp}: writing it would destroy the input",
                    None, f"give {role} another path")
        for other_role, other in seen:
            if same_file(out, other):
                raise OutputClobberError(f"the outputs {other_role} and {role} are the same file", out,
                                         f"give {role} another path")
        seen.append((role, out))


def prepare_output_dir(path: PathLike, *, resume: bool = False, overwrite: bool = False,
                       what: str = "output folder", inputs: Mapping[str, PathLike | None] | None = None) -> Path:
    """Create `path` (a run or dataset folder) for writing and return it.

    An existing, non-empty folder is refused unless `resume` (continue the run in it) or `overwrite` (replace
    the files the command writes). A file at `path`, or a folder that is (or holds) one of `inputs`, is refused.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputClobberError(f"the {what} is an existing file, not a folder", path, "pass a folder path")
    for role, inp in (inputs or {}).items():
        if inp is not None and (same_file(path, inp) or _inside(Path(inp), path)):
            raise OutputClobberError(f"the {what} {path} holds the input {role} {inp}: writing there could destroy it",
                                     None, "pass another output folder")
        if inp is not None and Path(inp).is_dir() and _inside(path, Path(inp)):
            raise OutputClobberError(f"the {what} {path} is inside the input folder {role} {inp}", None,
                                     "pass an output folder outside it")
    if path.is_dir() and any(path.iterdir()) and not (resume or overwrite):
        raise OutputClobberError(f"the {what} already exists and is not empty", path,
                                 "pass --resume to continue in it, --overwrite to replace its files, "
                                 "or a new folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise OutputClobberError(f"a parent of the {what} is a file", path, "pass a folder path") from None
    return path


def ensure_parents(*paths: PathLike | None) -> None:
    """Create the folders of the given output files now, so an unwritable path fails before the work starts."""
    for p in paths:
        if p is not None:
            Path(p).parent.mkdir(parents=True, exist_ok=True)
