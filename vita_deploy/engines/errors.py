"""Errors of the engine builder. Each message names the problem and the fix; the CLI prints it and exits 2."""
from __future__ import annotations

from dataclasses import dataclass


class EngineBuildError(RuntimeError):
    """The engine could not be built; the message names the cause and the fix."""


class TensorRTNotInstalledError(EngineBuildError):
    """Neither datacenter TensorRT nor TensorRT-RTX can be imported."""


class BuildInputError(EngineBuildError, ValueError):
    """Bad user input (shape spec, pool spec, option combination, manifest); a ValueError too."""


class ShapeSpecError(BuildInputError):
    """A malformed `name:AxBxC` spec, a name that is not a network input, or an inconsistent profile."""


class PrecisionError(BuildInputError):
    """`--fp16` asked of a strongly typed builder (TensorRT 11, TensorRT-RTX)."""


class ManifestError(BuildInputError):
    """manifest.json is missing, unreadable, or names files that do not match it."""


@dataclass(frozen=True)
class ParserMessage:
    """One ONNX parser error: its text and, when the parser knows them, the failing node's name, op and index."""

    desc: str
    node_name: str = ""
    op_type: str = ""
    node_index: int = -1
    code: str = ""

    def __str__(self) -> str:
        where = f" [node {self.node_name!r} ({self.op_type})]" if self.node_name or self.op_type else ""
        return f"{self.desc}{where}"


class OnnxParseError(EngineBuildError):
    """TensorRT's ONNX parser rejected the graph; `messages` holds the parser's errors."""

    def __init__(self, message: str, messages: list[ParserMessage]) -> None:
        super().__init__(message)
        self.messages = messages


class PluginMissingError(OnnxParseError):
    """The graph has a node for which no plugin creator is registered (`node_name`, `op_type` name it)."""

    def __init__(self, message: str, messages: list[ParserMessage], node_name: str, op_type: str) -> None:
        super().__init__(message, messages)
        self.node_name = node_name
        self.op_type = op_type
