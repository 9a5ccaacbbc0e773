"""The base of the project's bad-input errors: the CLI boundary (`vita_deploy.commands.cli`) prints them and exits 2.

Rooms with their own error types (CheckpointError, VideoReadError, ExportError, ...) keep them; new checks
that have no room of their own raise `InputError(what, path, fix)`.
"""
from __future__ import annotations

from pathlib import Path


class InputError(ValueError):
    """Bad user input. str() is `<what> (<path>): <how to fix>`."""

    def __init__(self, what: str, path: str | Path | None = None, fix: str | None = None) -> None:
        self.what, self.path, self.fix = what, (str(path) if path is not None else None), fix
        where = f" ({self.path})" if self.path is not None else ""
        super().__init__(f"{what}{where}" + (f": {fix}" if fix else ""))


class OutputClobberError(InputError):
    """An output that would overwrite one of the command's inputs, or an existing folder without --overwrite."""
