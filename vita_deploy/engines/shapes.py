"""trtexec's option grammars: shape specs (`--minShapes/--optShapes/--maxShapes`) and `--memPoolSize`.

Shape spec, as trtexec parses it: comma-separated `name:AxBxC` pairs; the name is everything before the last
colon, or is wrapped in single quotes when it holds a colon itself ('input:0':1x3x8x8); `name:scalar` or
`name:` is a 0-D shape; a name may hold one `*` wildcard. Give only --optShapes (min = opt = max) or all three.
Stricter than trtexec on purpose: an empty item, a negative or non-numeric dim, or a name given twice in one
flag is an error instead of being silently accepted.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass

from vita_deploy.engines.errors import BuildInputError, ShapeSpecError

log = logging.getLogger("vita_deploy.engines")
Shape = tuple[int, ...]
MEM_POOLS = ("workspace", "tacticSharedMem", "dlaSRAM", "dlaLocalDRAM", "dlaGlobalDRAM")
_UNITS = {"B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


@dataclass(frozen=True)
class ShapeRange:
    """min/opt/max shape (or values, for shape-tensor inputs) of one input in the optimisation profile."""

    min: Shape
    opt: Shape
    max: Shape

    def to_dict(self) -> dict[str, list[int]]:
        return {"min": list(self.min), "opt": list(self.opt), "max": list(self.max)}


def _split_name(item: str, flag: str) -> tuple[str, str]:
    quoted = item.split("'")
    if len(quoted) == 1:
        name, sep, dims = item.rpartition(":")
        if not sep:
            raise ShapeSpecError(f"{flag} item {item!r} has no ':': use name:AxBxC, e.g. images:1x3x384x640")
        return name, dims
    if len(quoted) != 3 or not quoted[2].startswith(":"):
        raise ShapeSpecError(f"{flag} item {item!r}: a quoted name must look like 'name:with:colons':1x3x8x8")
    return quoted[0] + quoted[1], quoted[2][1:]


def parse_shape_spec(spec: str | None, flag: str = "--optShapes") -> dict[str, Shape]:
    """`images:1x3x384x640,frame_queries:36x100x256` -> {"images": (1, 3, 384, 640), ...}."""
    shapes: dict[str, Shape] = {}
    if not spec:
        return shapes
    for item in spec.split(","):
        item = item.strip()
        if not item:
            raise ShapeSpecError(f"{flag} {spec!r} has an empty item: separate name:AxBxC pairs with single commas")
        name, dims = _split_name(item, flag)
        if not name:
            raise ShapeSpecError(f"{flag} item {item!r} has no input name: use name:AxBxC")
        if name.count("*") > 1:
            raise ShapeSpecError(f"{flag} name {name!r} has more than one '*' wildcard")
        if dims in ("", "scalar"):
            shape: Shape = ()
        else:
            parts = dims.split("x")
            if not all(p.isdigit() for p in parts):
                raise ShapeSpecError(f"{flag} item {item!r}: dims must be non-negative integers joined by 'x' "
                                     "(e.g. 1x3x384x640), or 'scalar'")
            shape = tuple(int(p) for p in parts)
        if name in shapes:
            raise ShapeSpecError(f"{flag} gives input {name!r} twice")
        shapes[name] = shape
    return shapes


def combine_shape_flags(min_spec: str | None, opt_spec: str | None, max_spec: str | None) -> dict[str, ShapeRange]:
    """The three flags -> {name: ShapeRange}, with trtexec's rule: only --optShapes, or all three."""
    given = [bool(s) for s in (min_spec, opt_spec, max_spec)]
    if not any(given):
        return {}
    if given != [False, True, False] and given != [True, True, True]:
        raise ShapeSpecError("give only --optShapes (min = opt = max) or all of --minShapes, --optShapes, "
                             "--maxShapes")
    opt = parse_shape_spec(opt_spec, "--optShapes")
    if given[0]:
        mins, maxs = parse_shape_spec(min_spec, "--minShapes"), parse_shape_spec(max_spec, "--maxShapes")
        if not set(mins) == set(opt) == set(maxs):
            raise ShapeSpecError(f"--minShapes, --optShapes and --maxShapes name different inputs ({sorted(mins)}, "
                                 f"{sorted(opt)}, {sorted(maxs)}): give every input in all three")
        return {n: ShapeRange(mins[n], opt[n], maxs[n]) for n in opt}
    return {n: ShapeRange(s, s, s) for n, s in opt.items()}


def _matches(pattern: str, name: str) -> bool:
    if "*" not in pattern:
        return pattern == name
    head, tail = pattern.split("*")
    return len(name) >= len(head) + len(tail) and name.startswith(head) and name.endswith(tail)


def _check_range(name: str, network_shape: Shape, r: ShapeRange) -> None:
    for label, shape in (("min", r.min), ("opt", r.opt), ("max", r.max)):
        if len(shape) != len(network_shape):
            raise ShapeSpecError(f"{label} shape {'x'.join(map(str, shape)) or 'scalar'} of input {name!r} has rank "
                                 f"{len(shape)}, but the network input is {list(network_shape)} (rank "
                                 f"{len(network_shape)}; -1 marks a dynamic dim)")
        for axis, (want, got) in enumerate(zip(network_shape, shape)):
            if want >= 0 and want != got:
                raise ShapeSpecError(f"{label} shape of input {name!r} sets static dim {axis} to {got}; the network "
                                     f"input is {list(network_shape)}")
    if not all(a <= b <= c for a, b, c in zip(r.min, r.opt, r.max)):
        raise ShapeSpecError(f"input {name!r}: need min <= opt <= max in every dim, got min {list(r.min)}, "
                             f"opt {list(r.opt)}, max {list(r.max)}")


def resolve_profile(inputs: dict[str, Shape], ranges: dict[str, ShapeRange],
                    shape_tensors: frozenset[str] = frozenset()) -> dict[str, ShapeRange]:
    """Match user ranges to the network inputs ({name: shape with -1 for dynamic dims}).

    Exact names win over wildcard patterns. A name or pattern that matches no input is an error. A dynamic
    input without a range gets 1 for its dynamic dims, with a warning, as trtexec does.
    """
    for key in ranges:
        if not any(_matches(key, n) for n in inputs):
            raise ShapeSpecError(f"shape given for {key!r}, which is not a network input; the inputs are "
                                 f"{', '.join(f'{n} {list(s)}' for n, s in inputs.items())}")
    profile: dict[str, ShapeRange] = {}
    for name, shape in inputs.items():
        r = ranges.get(name) or next((v for k, v in ranges.items() if "*" in k and _matches(k, name)), None)
        if r is None:
            if name in shape_tensors:
                raise ShapeSpecError(f"shape-tensor input {name!r} needs its values in --minShapes/--optShapes/"
                                     "--maxShapes")
            if all(d >= 0 for d in shape):
                continue
            fixed = tuple(d if d >= 0 else 1 for d in shape)
            log.warning("input %s has dynamic shape %s but no shapes were given: using %s (give --minShapes, "
                        "--optShapes and --maxShapes)", name, list(shape), "x".join(map(str, fixed)))
            r = ShapeRange(fixed, fixed, fixed)
        elif name not in shape_tensors:
            _check_range(name, shape, r)
        profile[name] = r
    return profile


def parse_mem_pool_size(spec: str | None) -> dict[str, int]:
    """trtexec `--memPoolSize=workspace:1024,tacticSharedMem:0.5M` -> {pool: bytes}. Sizes default to MiB;
    suffixes B, K, M, G (base 2); decimals are rounded down to whole bytes."""
    pools: dict[str, int] = {}
    if not spec:
        return pools
    for item in spec.split(","):
        name, sep, size = item.strip().partition(":")
        if not sep or name not in MEM_POOLS:
            raise BuildInputError(f"--memPoolSize item {item!r}: use pool:size with pool one of {', '.join(MEM_POOLS)}"
                                  " (e.g. workspace:4096 for 4 GiB)")
        unit = _UNITS.get(size[-1:].upper(), None) if size else None
        number = size[:-1] if unit else size
        try:
            value = float(number)
        except ValueError:
            value = float("nan")
        if not math.isfinite(value) or value < 0:
            raise BuildInputError(f"--memPoolSize item {item!r}: size must be a non-negative number with an "
                                  "optional B/K/M/G suffix (default MiB), e.g. workspace:1024 or workspace:1G")
        pools[name] = int(value * (unit or _UNITS["M"]))
    return pools
