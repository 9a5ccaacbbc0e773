"""NVIDIA's `MultiscaleDeformableAttnPlugin_TRT` as an ONNX op: schema, export translation, ORT CPU kernel.

- The schema (custom domain "trt", version 1) lets onnx's checker and shape inference type the node and lets
  onnxscript emit it; it is registered in-process by this module.
- `plugin_translation` maps our `vita_deploy::ms_deform_attn_plugin` torch op onto one plugin node with
  `plugin_version="2"` (the IPluginV3 version, TensorRT >= 10.11).
- `ort_session_options_with_plugin` registers a CPU implementation for ONNX Runtime (onnxruntime-extensions
  Python op running our reference `ms_deform_attn`), so plugin-mode graphs are checked in ORT too.
"""
from __future__ import annotations

import onnx
import onnxscript
from onnx.defs import OpSchema

PLUGIN_OP = "MultiscaleDeformableAttnPlugin_TRT"
PLUGIN_DOMAIN = "trt"
PLUGIN_VERSION = "2"
ORT_CONTRIB_DOMAIN = "ai.onnx.contrib"  # onnxruntime-extensions' domain for Python ops


def register_plugin_schema() -> None:
    if onnx.defs.has(PLUGIN_OP, PLUGIN_DOMAIN):
        return
    P = OpSchema.FormalParameter
    onnx.defs.register_schema(OpSchema(
        PLUGIN_OP, PLUGIN_DOMAIN, 1,
        doc="NVIDIA TensorRT multi-scale deformable attention plugin (libnvinfer_plugin).",
        inputs=[P("value", "T"), P("spatial_shapes", "I"), P("level_start_index", "I"), P("sampling_locations", "T"),
                P("attention_weights", "T")],
        outputs=[P("output", "T")],
        type_constraints=[("T", ["tensor(float)", "tensor(float16)"], "values"),
                          ("I", ["tensor(int32)"], "level sizes and offsets")],
        attributes=[OpSchema.Attribute("plugin_version", OpSchema.AttrType.STRING, "creator version", required=False),
                    OpSchema.Attribute("plugin_namespace", OpSchema.AttrType.STRING, "creator namespace",
                                       required=False)],
    ))


register_plugin_schema()
_trt = onnxscript.values.Opset(PLUGIN_DOMAIN, 1)


def plugin_translation(value, spatial_shapes, level_start_index, sampling_locations, attention_weights):
    """torch.onnx custom translation of vita_deploy::ms_deform_attn_plugin."""
    return _trt.MultiscaleDeformableAttnPlugin_TRT(value, spatial_shapes, level_start_index, sampling_locations,
                                                   attention_weights, plugin_version=PLUGIN_VERSION)


def annotate_plugin_outputs(model: onnx.ModelProto) -> onnx.ModelProto:
    """Give every plugin node's output its type and shape, (N, Lq, M, D) from value (N, S, M, D) and
    sampling_locations (N, Lq, ...), and drop the exporter's untyped value_info entries, so that
    onnx.checker's full check and shape inference pass without our schema registered."""
    infos = {v.name: v for v in list(model.graph.value_info) + list(model.graph.input)}
    keep = [v for v in model.graph.value_info if v.type.HasField("tensor_type")]
    del model.graph.value_info[:]
    model.graph.value_info.extend(keep)
    infos = {v.name: v for v in list(model.graph.value_info) + list(model.graph.input)}
    for node in model.graph.node:
        if node.op_type != PLUGIN_OP:
            continue
        value, locations = infos.get(node.input[0]), infos.get(node.input[3])
        if value is None or locations is None:
            continue
        vdims, ldims = value.type.tensor_type.shape.dim, locations.type.tensor_type.shape.dim
        out = onnx.helper.make_tensor_value_info(node.output[0], value.type.tensor_type.elem_type, None)
        for dim in (vdims[0], ldims[1], vdims[2], vdims[3]):
            new = out.type.tensor_type.shape.dim.add()
            new.CopyFrom(dim)
        existing = [v for v in model.graph.value_info if v.name == node.output[0]]
        for v in existing:
            model.graph.value_info.remove(v)
        model.graph.value_info.append(out)
    return model


def ort_session_options_with_plugin(model_path: str):
    """(SessionOptions, path of a copy of the model whose plugin nodes ORT can run on the CPU).

    Needs onnxruntime-extensions: the plugin nodes are moved to its Python-op domain and computed with the
    reference `ms_deform_attn` in float32.
    """
    import numpy as np
    import onnxruntime as ort
    import torch
    from onnxruntime_extensions import PyCustomOpDef, get_library_path, onnx_op

    from vita_deploy.modeling.ms_deform_attn import ms_deform_attn

    if not getattr(ort_session_options_with_plugin, "_registered", False):
        for dtype in (PyCustomOpDef.dt_float, PyCustomOpDef.dt_float16):
            @onnx_op(op_type=PLUGIN_OP if dtype == PyCustomOpDef.dt_float else PLUGIN_OP + "_fp16",
                     inputs=[dtype, PyCustomOpDef.dt_int32, PyCustomOpDef.dt_int32, dtype, dtype],
                     outputs=[dtype], attrs={"plugin_version": PyCustomOpDef.dt_string})
            def _kernel(value, spatial_shapes, level_start_index, locations, weights, **_):
                out = ms_deform_attn(torch.from_numpy(np.asarray(value, np.float32)), torch.from_numpy(spatial_shapes),
                                     torch.from_numpy(level_start_index),
                                     torch.from_numpy(np.asarray(locations, np.float32)),
                                     torch.from_numpy(np.asarray(weights, np.float32)))
                return out.numpy().astype(value.dtype)
        ort_session_options_with_plugin._registered = True

    model = onnx.load(model_path)
    for node in model.graph.node:
        if node.op_type == PLUGIN_OP:
            node.domain = ORT_CONTRIB_DOMAIN
            value_type = next((v.type.tensor_type.elem_type for v in list(model.graph.value_info)
                               + list(model.graph.input) if v.name == node.input[0]), onnx.TensorProto.FLOAT)
            if value_type == onnx.TensorProto.FLOAT16:
                node.op_type = PLUGIN_OP + "_fp16"
    opsets = [o for o in model.opset_import if o.domain not in (PLUGIN_DOMAIN, ORT_CONTRIB_DOMAIN)]
    del model.opset_import[:]
    model.opset_import.extend(opsets + [onnx.helper.make_opsetid(ORT_CONTRIB_DOMAIN, 1)])
    path = model_path + ".ort_plugin.onnx"
    onnx.save(model, path)
    options = ort.SessionOptions()
    options.register_custom_ops_library(get_library_path())
    return options, path
