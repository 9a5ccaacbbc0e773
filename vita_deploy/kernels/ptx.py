"""PTX of the Triton deformable-attention kernel for a given GPU, produced without a GPU.

The TensorRT AOT plugin (`vita_deploy.engines.vita_plugin`) embeds this PTX in the engine; CI compiles it for
every supported compute capability, reads its entry and parameter list back, and assembles it with `ptxas`.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from vita_deploy.kernels import ms_deform_attn as K

# CUDA 12.x drivers (>= 12.4) load PTX ISA 8.4; Triton's default (8.8 on sm_75..89, 9.x on sm_90) needs newer ones.
PTX_VERSION = 84
COMPUTE_CAPABILITIES = (75, 80, 86, 89, 90)
# Triton type names of the kernel's pointer arguments, by torch/TensorRT dtype name.
TRITON_PTR = {"float32": "*fp32", "float16": "*fp16", "bfloat16": "*bf16"}
INPUTS = ("value_ptr", "shapes_ptr", "starts_ptr", "loc_ptr", "attn_ptr")
EXTRA_ARGS = ("N", "S", "Lq")  # int32, after the inputs and before the output (TensorRT's AOT convention)
OUTPUTS = ("out_ptr",)


@dataclass(frozen=True)
class CompiledPTX:
    """One compiled kernel: entry name, PTX text, and the launch facts TensorRT needs."""

    name: str
    ptx: str
    num_warps: int
    shared: int  # bytes of dynamic shared memory
    cc: int
    block_q: int

    @property
    def block_threads(self) -> int:
        return self.num_warps * 32


def signature(value_dtype: str = "float32", loc_dtype: str = "float32", attn_dtype: str = "float32") -> dict:
    """Triton signature of the kernel's runtime arguments (constexprs are compiled in)."""
    try:
        v, lo, a = TRITON_PTR[value_dtype], TRITON_PTR[loc_dtype], TRITON_PTR[attn_dtype]
    except KeyError as e:
        raise ValueError(f"unsupported dtype {e.args[0]!r}; choose from {sorted(TRITON_PTR)}") from None
    return {"value_ptr": v, "shapes_ptr": "*i32", "starts_ptr": "*i32", "loc_ptr": lo, "attn_ptr": a,
            "N": "i32", "S": "i32", "Lq": "i32", "out_ptr": v}


def compile_ptx(cc: int, *, heads: int, channels: int, levels: int, points: int, value_dtype: str = "float32",
                loc_dtype: str = "float32", attn_dtype: str = "float32", block_q: int = K.DEFAULT_BLOCK_Q,
                num_warps: int = K.DEFAULT_NUM_WARPS, ptx_version: int = PTX_VERSION) -> CompiledPTX:
    """Compile the kernel for compute capability `cc` (75, 80, 86, 89, 90, ...) with M, D, L, P fixed."""
    return compile_ptx_many([dict(cc=cc, heads=heads, channels=channels, levels=levels, points=points,
                                  value_dtype=value_dtype, loc_dtype=loc_dtype, attn_dtype=attn_dtype,
                                  block_q=block_q, num_warps=num_warps, ptx_version=ptx_version)])[0]


def compile_ptx_many(requests: list[dict]) -> list[CompiledPTX]:
    """compile_ptx for each request (its keyword arguments, `cc` included). Where kernels launch in Triton's interpreter
    (TRITON_INTERPRET=1 at import, the CPU tests), Triton's own library is interpreted too and cannot be
    compiled, so the PTX is made in one child process without the interpreter."""
    K.require_triton()
    if not K.interpreting():
        return [_compile(**r) for r in requests]
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-m", "vita_deploy.kernels.ptx"], input=json.dumps(requests),
                          capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"PTX generation failed in the child process: {proc.stderr.strip()[-2000:]}")
    return [CompiledPTX(**r) for r in json.loads(proc.stdout)]


def _compile(cc: int, heads: int, channels: int, levels: int, points: int, value_dtype: str = "float32",
             loc_dtype: str = "float32", attn_dtype: str = "float32", block_q: int = K.DEFAULT_BLOCK_Q,
             num_warps: int = K.DEFAULT_NUM_WARPS, ptx_version: int = PTX_VERSION) -> CompiledPTX:
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    constexprs = {"M": heads, "D": channels, "L": levels, "P": points, "BLOCK_Q": block_q,
                  "BLOCK_D": K.block_d(channels)}
    sig = signature(value_dtype, loc_dtype, attn_dtype)
    # Pointers are 16-byte aligned (cudaMalloc and TensorRT's activation memory are 256-byte aligned), as Triton's
    # JIT assumes when it sees aligned tensors: this is what lets value rows load as vectors.
    attrs = {(i,): [["tt.divisibility", 16]] for i, t in enumerate(sig.values()) if t.startswith("*")}
    src = ASTSource(K.msda_fwd_jit, signature=sig, constexprs=constexprs, attrs=attrs)
    compiled = K.triton.compile(src, target=GPUTarget("cuda", cc, 32),
                                options={"num_warps": num_warps, "num_stages": 1, "ptx_version": ptx_version,
                                         "enable_fp_fusion": True})
    return CompiledPTX(compiled.metadata.name, compiled.asm["ptx"], compiled.metadata.num_warps,
                       compiled.metadata.shared, cc, block_q)


@dataclass(frozen=True)
class PTXHeader:
    version: str  # ".version 8.4" -> "8.4"
    target: str  # ".target sm_90a" -> "sm_90a"
    entry: str
    params: tuple[str, ...]  # PTX types of the entry's parameters in order (".u64", ".u32", ...)


def read_ptx(ptx: str) -> PTXHeader:
    """Parse .version, .target and the single .entry with its parameter types."""
    version = re.search(r"^\s*\.version\s+(\S+)", ptx, re.M)
    target = re.search(r"^\s*\.target\s+([\w]+)", ptx, re.M)
    entry = re.search(r"\.entry\s+(\w+)\s*\((.*?)\)", ptx, re.S)
    if not (version and target and entry):
        raise ValueError("not a PTX module with .version, .target and one .entry")
    params = tuple(re.findall(r"\.param\s+(\.\w+)", entry.group(2)))
    return PTXHeader(version.group(1), target.group(1), entry.group(1), params)


def expected_params(triton_hidden: int) -> tuple[str, ...]:
    """PTX parameter types of the kernel: 5 input pointers, 3 int32 extras, 1 output pointer (what TensorRT's AOT
    launch passes), then `triton_hidden` pointers Triton appends itself (global and profile scratch since 3.5;
    `without_hidden_params` removes them for the plugin)."""
    return (".u64",) * len(INPUTS) + (".u32",) * len(EXTRA_ARGS) + (".u64",) * len(OUTPUTS) + (".u64",) * triton_hidden


def without_hidden_params(ptx: str, hidden: int) -> str:
    """The PTX with the last `hidden` entry parameters removed: the global/profile scratch pointers Triton >= 3.5
    appends, which TensorRT's AOT launch (inputs, int extras, outputs) does not pass. Only allowed where the body
    never reads them (this kernel needs no scratch memory); raises otherwise."""
    if hidden == 0:
        return ptx
    header = read_ptx(ptx)
    lines = ptx.splitlines(keepends=True)
    names = [f"{header.entry}_param_{i}" for i in range(len(header.params) - hidden, len(header.params))]
    decl = [i for i, line in enumerate(lines) if any(re.search(rf"\.param\s.*\b{n}\b", line) for n in names)]
    used = [line for i, line in enumerate(lines) if i not in decl and any(re.search(rf"\b{n}\b", line) for n in names)]
    if len(decl) != hidden or used:
        raise ValueError(f"the kernel reads Triton's scratch parameters {names}: it cannot run as a TensorRT AOT plugin")
    first = decl[0]
    lines[first - 1] = lines[first - 1].rstrip().rstrip(",") + "\n"  # the parameter before them ends the list
    return "".join(line for i, line in enumerate(lines) if i not in decl)


def triton_hidden_params() -> int:
    """How many pointer parameters this Triton appends to every kernel (0 before 3.5, 2 from 3.5 on)."""
    K.require_triton()
    major, minor = (int(x) for x in K.triton.__version__.split(".")[:2])
    return 2 if (major, minor) >= (3, 5) else 0


def find_ptxas() -> str | None:
    """ptxas bundled with the triton wheel, else one on PATH (CUDA toolkit)."""
    if K.triton is not None:
        bundled = Path(K.triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"
        if bundled.is_file():
            return str(bundled)
    return shutil.which("ptxas")


def assemble(ptx: str, arch: str, ptxas: str | None = None, verbose: bool = False):
    """Assemble PTX into a cubin for `arch` (e.g. "sm_90a") with ptxas; raises with ptxas' message on failure.
    Returns the cubin bytes, or (cubin, ptxas -v report: registers, spills) with verbose=True."""
    ptxas = ptxas or find_ptxas()
    if ptxas is None:
        raise FileNotFoundError("no ptxas found (neither in the triton wheel nor on PATH)")
    with tempfile.TemporaryDirectory() as tmp:
        src, out = Path(tmp) / "k.ptx", Path(tmp) / "k.cubin"
        src.write_text(ptx)
        cmd = [ptxas, f"-arch={arch}", *(["-v"] if verbose else []), str(src), "-o", str(out)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"ptxas -arch={arch} failed: {proc.stderr.strip()}")
        cubin = out.read_bytes()
    return (cubin, proc.stdout + proc.stderr) if verbose else cubin


if __name__ == "__main__":  # the child process of compile_ptx_many: JSON requests on stdin -> JSON results
    print(json.dumps([asdict(c) for c in compile_ptx_many(json.loads(sys.stdin.read()))]))
