"""PTX of the Triton kernel, produced without a GPU for every supported compute capability: header, entry and
parameter list checked against what the TensorRT AOT plugin passes, and assembled by ptxas."""
from __future__ import annotations

import re

import pytest

pytest.importorskip("triton", reason="triton is not installed (pip install -e '.[gpu]' or '.[dev]')")

from vita_deploy.engines import vita_plugin  # noqa: E402
from vita_deploy.kernels import ptx as P  # noqa: E402

R50 = dict(heads=8, channels=32, levels=3, points=4)  # the r50 pixel decoder's deformable attention


@pytest.fixture(scope="module")
def compiled():
    """fp16 values with fp32 locations/weights (the vita-plugin fp16 graph) for each compute capability."""
    kernels = P.compile_ptx_many([dict(cc=cc, **R50, value_dtype="float16") for cc in P.COMPUTE_CAPABILITIES])
    return dict(zip(P.COMPUTE_CAPABILITIES, kernels))


@pytest.mark.parametrize("cc", P.COMPUTE_CAPABILITIES)
def test_ptx_header_entry_and_parameters_match_the_plugin_launch(compiled, cc):
    kernel = compiled[cc]
    header = P.read_ptx(kernel.ptx)
    assert header.version == "8.4"  # explicit PTX ISA that CUDA 12.4+ drivers load (Triton's default is newer)
    assert header.target == (f"sm_{cc}a" if cc == 90 else f"sm_{cc}")
    assert header.entry == kernel.name
    # inputs (5 pointers), int32 extras (N, S, Lq), output pointer, then the scratch pointers Triton appends
    assert header.params == P.expected_params(P.triton_hidden_params())
    assert len(vita_plugin.extra_args((18, 4760, 8, 32), (18, 4760, 8, 3, 4, 2))) == len(P.EXTRA_ARGS)
    assert kernel.num_warps == 4 and kernel.block_threads == 128 and kernel.shared == 0


@pytest.mark.parametrize("cc", P.COMPUTE_CAPABILITIES)
def test_plugin_ptx_has_exactly_the_parameters_tensorrt_passes(compiled, cc):
    """The AOT plugin drops Triton's unused scratch pointers: 5 inputs, 3 int32 extras, 1 output remain."""
    ptx = P.without_hidden_params(compiled[cc].ptx, P.triton_hidden_params())
    header = P.read_ptx(ptx)
    assert header.params == P.expected_params(0) and header.entry == compiled[cc].name
    P.assemble(ptx, header.target)


def test_scratch_parameters_that_the_body_reads_are_not_dropped(compiled):
    ptx = compiled[90].ptx
    last = f"{compiled[90].name}_param_{len(P.read_ptx(ptx).params) - 1}"
    body_reads_it = ptx.replace("\tret;", f"\tld.param.u64 \t%rd999, [{last}];\n\tret;", 1)
    with pytest.raises(ValueError, match="scratch"):
        P.without_hidden_params(body_reads_it, 2)


@pytest.mark.parametrize("cc", P.COMPUTE_CAPABILITIES)
def test_ptxas_assembles_the_ptx_without_spills(compiled, cc):
    header = P.read_ptx(compiled[cc].ptx)
    cubin, report = P.assemble(compiled[cc].ptx, header.target, verbose=True)
    assert cubin[:4] == b"\x7fELF"
    spills = [int(x) for x in re.findall(r"(\d+) bytes spill (?:stores|loads)", report)]
    print(f"\nsm_{cc}: " + "; ".join(line.replace("ptxas info    :", "").strip() for line in report.splitlines()
                                     if "registers" in line or "spill" in line))
    assert spills and max(spills) == 0


def test_other_dtype_signatures_compile_and_assemble():
    combos = [("float32", "float32"), ("bfloat16", "float32"), ("float16", "float16")]  # (value, locations+weights)
    kernels = P.compile_ptx_many([dict(cc=89, **R50, value_dtype=v, loc_dtype=lo, attn_dtype=lo) for v, lo in combos])
    for kernel in kernels:
        assert P.read_ptx(kernel.ptx).params == P.expected_params(P.triton_hidden_params())
        P.assemble(kernel.ptx, "sm_89")


def test_unsupported_dtype_and_bad_ptx_are_refused():
    with pytest.raises(ValueError, match="unsupported dtype"):
        P.signature("int8")
    with pytest.raises(ValueError, match="not a PTX module"):
        P.read_ptx("// empty")
    with pytest.raises(RuntimeError, match="ptxas"):
        P.assemble(".version 8.4\n.target sm_80\n.address_size 64\n.visible .entry k() { bogus; }", "sm_80")
