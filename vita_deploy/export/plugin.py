"""Deformable-attention plugin ops in ONNX: NVIDIA's `MultiscaleDeformableAttnPlugin_TRT` ("plugin" export mode)
and our own Triton-kernel plugin ("vita-plugin"): schemas, export translations, and a standard-op body so that
ONNX Runtime can run plugin-mode graphs for parity checks.

- NVIDIA's nodes: op_type `MultiscaleDeformableAttnPlugin_TRT`, domain "trt", attribute `plugin_version="2"` (the
  IPluginV3 creator, TensorRT >= 10.11); inputs exactly as NVIDIA's plugin: value (N, S, M, D), spatial_shapes
  (L, 2) int32, level_start_index (L,) int32, sampling_locations (N, Lq, M, L, P, 2) and attention_weights
  (N, Lq, M, L, P) in value's dtype; output (N, Lq, M, D). Built by TensorRT through NVIDIA's plugin library.
- Our nodes: op_type `ms_deform_attn`, domain "vita_deploy", attributes `plugin_namespace="vita_deploy"` and
  `aot=1`, creator version "1" (TensorRT >= 10.9 then uses the plugin's ahead-of-time implementation: the engine carries the Triton
  kernel's PTX, `vita_deploy.engines.vita_plugin`); the same inputs, except that sampling_locations and
  attention_weights stay float32 in fp16 graphs (the kernel computes positions and accumulates in fp32).
- `annotate_plugin_outputs` writes each plugin output's type and shape into value_info, so onnx.checker's full
  check (with shape inference) passes in any process, without our schema registered.
- `with_plugin_function` returns a copy of a model that also carries a model-local ONNX function with the
  plugin's name and domain, built from standard operators (Gather-based bilinear sampling, fp32 coordinates
  and accumulation). ONNX Runtime inlines it, so plugin graphs run unchanged in ORT for the check. It is
  not part of the exported file: a TensorRT parser that finds a local function may import it instead of the
  plugin.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import onnx
import onnxscript
from onnx import TensorProto, helper
from onnx.defs import OpSchema


@dataclass(frozen=True)
class PluginOp:
    """One deformable-attention plugin as an ONNX node: its op type, domain and the attributes every node gets."""

    op_type: str
    domain: str
    version: str  # the TensorRT creator's plugin_version
    attributes: dict = field(default_factory=dict)
    doc: str = ""
    fp32_coordinates: bool = False  # sampling_locations / attention_weights stay float32 in fp16 graphs


NVIDIA_PLUGIN = PluginOp("MultiscaleDeformableAttnPlugin_TRT", "trt", "2", {"plugin_version": "2"},
                         "NVIDIA TensorRT multi-scale deformable attention plugin (libnvinfer_plugin).")
VITA_PLUGIN = PluginOp("ms_deform_attn", "vita_deploy", "1",
                       {"plugin_namespace": "vita_deploy", "aot": 1},  # plugin_version: the default "1"
                       "vita-deploy Triton multi-scale deformable attention (TensorRT AOT plugin).",
                       fp32_coordinates=True)
PLUGINS = {"plugin": NVIDIA_PLUGIN, "vita-plugin": VITA_PLUGIN}  # export mode -> op
PLUGIN_OPS = {p.op_type for p in PLUGINS.values()}
# NVIDIA's plugin under its historical names (the engine builder and tests refer to it).
PLUGIN_OP, PLUGIN_DOMAIN, PLUGIN_VERSION = NVIDIA_PLUGIN.op_type, NVIDIA_PLUGIN.domain, NVIDIA_PLUGIN.version


def register_plugin_schema(plugin: PluginOp = NVIDIA_PLUGIN) -> None:
    """Register the op's schema in this process (typed checks while exporting); idempotent."""
    if onnx.defs.has(plugin.op_type, plugin.domain):
        return
    P = OpSchema.FormalParameter
    coords = "F" if plugin.fp32_coordinates else "T"
    attrs = [OpSchema.Attribute(name, OpSchema.AttrType.INT if isinstance(v, int) else OpSchema.AttrType.STRING,
                                name, required=False) for name, v in plugin.attributes.items()]
    if "plugin_namespace" not in plugin.attributes:
        attrs.append(OpSchema.Attribute("plugin_namespace", OpSchema.AttrType.STRING, "creator namespace",
                                        required=False))
    constraints = [("T", ["tensor(float)", "tensor(float16)"] + (["tensor(bfloat16)"] if plugin.fp32_coordinates
                                                                 else []), "values"),
                   ("I", ["tensor(int32)"], "level sizes and offsets")]
    if plugin.fp32_coordinates:
        constraints.append(("F", ["tensor(float)", "tensor(float16)", "tensor(bfloat16)"], "locations, weights"))
    onnx.defs.register_schema(OpSchema(
        plugin.op_type, plugin.domain, 1, doc=plugin.doc,
        inputs=[P("value", "T"), P("spatial_shapes", "I"), P("level_start_index", "I"),
                P("sampling_locations", coords), P("attention_weights", coords)],
        outputs=[P("output", "T")], type_constraints=constraints, attributes=attrs))


for _plugin in PLUGINS.values():
    register_plugin_schema(_plugin)
_trt = onnxscript.values.Opset(NVIDIA_PLUGIN.domain, 1)
_vita = onnxscript.values.Opset(VITA_PLUGIN.domain, 1)


def plugin_translation(value, spatial_shapes, level_start_index, sampling_locations, attention_weights):
    """torch.onnx custom translation of `vita_deploy::ms_deform_attn_plugin` -> one NVIDIA plugin node."""
    return _trt.MultiscaleDeformableAttnPlugin_TRT(value, spatial_shapes, level_start_index, sampling_locations,
                                                   attention_weights, **NVIDIA_PLUGIN.attributes)


def vita_plugin_translation(value, spatial_shapes, level_start_index, sampling_locations, attention_weights):
    """torch.onnx custom translation of `vita_deploy::ms_deform_attn_plugin` -> one node of our own plugin."""
    return _vita.ms_deform_attn(value, spatial_shapes, level_start_index, sampling_locations, attention_weights,
                                **VITA_PLUGIN.attributes)


TRANSLATIONS = {"plugin": plugin_translation, "vita-plugin": vita_plugin_translation}


def annotate_plugin_outputs(model: onnx.ModelProto) -> onnx.ModelProto:
    """Type every plugin output as (N, Lq, M, D) from value (N, S, M, D) and sampling_locations (N, Lq, ...),
    drop untyped value_info entries, and declare the plugins' opsets. Modifies and returns `model`."""
    keep = [v for v in model.graph.value_info if v.type.HasField("tensor_type")]
    del model.graph.value_info[:]
    model.graph.value_info.extend(keep)
    infos = {v.name: v for v in list(model.graph.value_info) + list(model.graph.input)}
    for node in model.graph.node:
        if (node.op_type, node.domain) not in {(p.op_type, p.domain) for p in PLUGINS.values()}:
            continue
        value, locations = infos.get(node.input[0]), infos.get(node.input[3])
        if value is None or locations is None:
            raise ValueError(f"plugin node {node.name}: the exporter left its inputs untyped; cannot type its output")
        vdims, ldims = value.type.tensor_type.shape.dim, locations.type.tensor_type.shape.dim
        out = helper.make_tensor_value_info(node.output[0], value.type.tensor_type.elem_type, None)
        for dim in (vdims[0], ldims[1], vdims[2], vdims[3]):
            out.type.tensor_type.shape.dim.add().CopyFrom(dim)
        for v in [v for v in model.graph.value_info if v.name == node.output[0]]:
            model.graph.value_info.remove(v)
        model.graph.value_info.append(out)
    for plugin in plugins_in(model):
        if not any(o.domain == plugin.domain for o in model.opset_import):
            model.opset_import.append(helper.make_opsetid(plugin.domain, 1))
    return model


def plugins_in(model: onnx.ModelProto) -> list[PluginOp]:
    """The plugin ops that `model`'s graph uses."""
    used = {(n.op_type, n.domain) for n in model.graph.node}
    return [p for p in PLUGINS.values() if (p.op_type, p.domain) in used]


def plugin_function(opset: int = 18, plugin: PluginOp = NVIDIA_PLUGIN) -> onnx.FunctionProto:
    """The plugin's computation from standard ONNX ops, vectorised over levels (any L, all sizes dynamic).

    Per corner (x0 + dx, y0 + dy) of the bilinear cell around loc * size - 0.5: one Gather from value laid out as
    (N*M*S, D) at row (n*M + m)*S + level_start + y*w + x, weighted by the bilinear weight, a zero for corners
    outside the level, and the attention weight; summed over levels, points and corners.
    """
    nodes: list[onnx.NodeProto] = []

    def op(op_type: str, *inputs: str, **attrs) -> str:
        out = f"t{len(nodes)}"
        nodes.append(helper.make_node(op_type, list(inputs), [out], **attrs))
        return out

    def const(value, dtype=TensorProto.INT64) -> str:
        values = value if isinstance(value, list) else [value]
        dims = [len(values)] if isinstance(value, list) else []
        return op("Constant", value=helper.make_tensor("c", dtype, dims, values))

    f32, i64 = TensorProto.FLOAT, TensorProto.INT64
    loc = op("Cast", "sampling_locations", to=f32)  # (N, Lq, M, L, P, 2)
    attn = op("Cast", "attention_weights", to=f32)  # (N, Lq, M, L, P)
    shapes = op("Cast", "spatial_shapes", to=i64)  # (L, 2)
    h = op("Unsqueeze", op("Gather", shapes, const(0), axis=1), const([1]))  # (L, 1): broadcasts over P
    w = op("Unsqueeze", op("Gather", shapes, const(1), axis=1), const([1]))
    start = op("Unsqueeze", op("Cast", "level_start_index", to=i64), const([1]))  # (L, 1)
    hf, wf = op("Cast", h, to=f32), op("Cast", w, to=f32)
    half = const(0.5, f32)
    x = op("Sub", op("Mul", op("Gather", loc, const(0), axis=5), wf), half)  # (N, Lq, M, L, P), pixel units
    y = op("Sub", op("Mul", op("Gather", loc, const(1), axis=5), hf), half)
    x0, y0 = op("Floor", x), op("Floor", y)
    # value (N, S, M, D) -> (N, M, S, D) -> (N*M*S, D); row base (n*M + m)*S as (N, 1, M, 1, 1)
    vshape = op("Shape", "value")
    n, s, m = (op("Gather", vshape, const(i)) for i in range(3))
    rows = op("Reshape", op("Transpose", "value", perm=[0, 2, 1, 3]), const([-1, 0]), allowzero=0)
    rows = op("Reshape", rows, op("Concat", const([-1]), op("Gather", vshape, const([3])), axis=0))
    base = op("Mul", op("Range", const(0), op("Mul", n, m), const(1)), s)  # (N*M,)
    base = op("Reshape", base, op("Concat", op("Unsqueeze", n, const([0])), const([1]),
                                  op("Unsqueeze", m, const([0])), const([1, 1]), axis=0))
    one, zero = const(1.0, f32), const(0.0, f32)
    total = None
    for dy, dx in ((0, 0), (0, 1), (1, 0), (1, 1)):
        cx = op("Add", x0, const(float(dx), f32)) if dx else x0
        cy = op("Add", y0, const(float(dy), f32)) if dy else y0
        weight = op("Mul", op("Sub", one, op("Abs", op("Sub", x, cx))), op("Sub", one, op("Abs", op("Sub", y, cy))))
        inside = op("And", op("And", op("GreaterOrEqual", cx, zero), op("LessOrEqual", cx, op("Sub", wf, one))),
                    op("And", op("GreaterOrEqual", cy, zero), op("LessOrEqual", cy, op("Sub", hf, one))))
        weight = op("Mul", op("Mul", weight, op("Cast", inside, to=f32)), attn)
        xi = op("Cast", op("Max", op("Min", cx, op("Sub", wf, one)), zero), to=i64)
        yi = op("Cast", op("Max", op("Min", cy, op("Sub", hf, one)), zero), to=i64)
        index = op("Add", op("Add", base, start), op("Add", op("Mul", yi, w), xi))  # (N, Lq, M, L, P)
        sampled = op("Cast", op("Gather", rows, index, axis=0), to=f32)  # (N, Lq, M, L, P, D)
        term = op("ReduceSum", op("Mul", sampled, op("Unsqueeze", weight, const([-1]))), const([3, 4]), keepdims=0)
        total = term if total is None else op("Add", total, term)
    nodes.append(helper.make_node("CastLike", [total, "value"], ["output"]))  # (N, Lq, M, D)
    return helper.make_function(
        plugin.domain, plugin.op_type,
        ["value", "spatial_shapes", "level_start_index", "sampling_locations", "attention_weights"], ["output"],
        nodes, [helper.make_opsetid("", opset)], attributes=sorted({*plugin.attributes, "plugin_namespace"}))


def with_plugin_function(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of `model` whose plugin nodes ONNX Runtime can execute (adds `plugin_function` as a local function
    for each plugin the graph uses)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    opset = next(o.version for o in out.opset_import if o.domain in ("", "ai.onnx"))
    out.functions.extend(plugin_function(opset, plugin) for plugin in plugins_in(model))
    return out
