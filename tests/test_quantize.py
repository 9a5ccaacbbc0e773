"""INT8 / FP8 post-training quantization (vita_deploy/export/quantize.py, `export --precision int8|fp8`): the
placement rule, a quantized export end to end (CLI -> manifest -> verify), FP8 on ONNX Runtime, and the refusals.

Cheap by design: the fp32 tiny export is the one tests/test_export.py shares, quantization calibrates on 2-3
frames, and the CLI export is the tiny detector + VITA head at a fixed 64x96.
"""
from __future__ import annotations

import json
import shutil

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest

pytest.importorskip("modelopt.onnx.quantization", reason="nvidia-modelopt is the `quant` extra (make install-dev)")

from test_export import exported, random_model  # noqa: E402
from vita_deploy.commands import verify  # noqa: E402
from vita_deploy.config import get_config  # noqa: E402
from vita_deploy.commands.export import main as export_main  # noqa: E402
from vita_deploy.export.quantize import (KEPT_SCOPES, QUANTIZED_SCOPES, QuantOptions, QuantizeError,  # noqa: E402
                                         _strip_root, block_of, calibration_images, node_scope,
                                         ort_session_options, placement, quantize_export, sample_frames,
                                         sensitive_blocks)
from vita_deploy.modeling.checkpoint import save_checkpoint  # noqa: E402

TINY = get_config("tiny")


def _scopes(model: onnx.ModelProto) -> dict[str, str]:
    return {n.name: _strip_root(node_scope(n)) for n in model.graph.node}


def test_placement_quantizes_backbone_and_pixel_decoder_only():
    """Conv/MatMul/Gemm under backbone / pixel_decoder / vita_mask_features are quantized, except deformable-
    attention sampling offsets and attention weights; the frame decoder, heads and the VITA graph stay fp32."""
    det = onnx.load(str(exported("tiny") / "frame_detector.onnx"))
    scopes = _scopes(det)
    place = placement(det)
    assert place["quantize"] and place["exclude"]
    for name in place["quantize"]:
        parts = scopes[name].split(".")
        assert parts[0] in QUANTIZED_SCOPES and not set(parts) & set(KEPT_SCOPES), scopes[name]
    excluded = {scopes[n] for n in place["exclude"]}
    assert any(s.startswith("predictor") for s in excluded)  # the frame decoder and its heads
    for kept in KEPT_SCOPES:
        assert any(kept in s.split(".") for s in excluded), kept
    convs = [n.name for n in det.graph.node if n.op_type == "Conv" and scopes[n.name].startswith("backbone")]
    assert convs and set(convs) <= set(place["quantize"])  # every backbone convolution
    vita = onnx.load(str(exported("tiny") / "vita_head.onnx"))
    assert placement(vita)["quantize"] == []
    # restricted to one block (the sensitivity sweep): only that block's nodes
    one = placement(det, {"backbone.res2"})
    assert one["quantize"] and all(scopes[n].startswith("backbone.res2") for n in one["quantize"])


def test_sensitive_blocks_rule_and_kept_blocks():
    """A block stays fp32 when quantizing it alone costs more than max_drop of frame-query *or* mask-feature
    cosine; placement(kept_blocks=...) then leaves exactly that block's nodes unquantized."""
    table = {"backbone.res2": {"frame_queries_cosine": 0.9995, "mask_features_cosine": 0.9999},
             "backbone.res3": {"frame_queries_cosine": 0.9999, "mask_features_cosine": 0.998},
             "pixel_decoder.adapter_1": {"frame_queries_cosine": 0.998, "mask_features_cosine": 0.9999},
             "pixel_decoder.transformer": {"frame_queries_cosine": 1.0, "mask_features_cosine": 0.9991}}
    assert sensitive_blocks(table, 1e-3) == ["backbone.res3", "pixel_decoder.adapter_1"]
    assert sensitive_blocks(table, 1e-4) == sorted(table)
    assert sensitive_blocks(table, 0.5) == []
    det = onnx.load(str(exported("tiny") / "frame_detector.onnx"))
    scopes = _scopes(det)
    full, kept = placement(det), placement(det, kept_blocks={"backbone.res3", "pixel_decoder.adapter_1"})
    dropped = set(full["quantize"]) - set(kept["quantize"])
    assert dropped and {block_of(scopes[n]) for n in dropped} == {"backbone.res3", "pixel_decoder.adapter_1"}
    assert set(kept["quantize"]) < set(full["quantize"]) and dropped <= set(kept["exclude"])


def test_sensitivity_sweep_chooses_the_placement(tmp_path):
    """`export --sensitivity`: every quantizable block is measured alone (frame-query and mask-feature cosine),
    the blocks over the limit stay fp32 in the written graph, and quant_placement.md shows the table and choice."""
    out = tmp_path / "q"
    out.mkdir()
    shutil.copy(exported("tiny") / "frame_detector.onnx", out)
    det = onnx.load(str(out / "frame_detector.onnx"))
    scopes = _scopes(det)
    frames, source = sample_frames(None, TINY, 2)
    record = quantize_export(out, {"frame_detector": "frame_detector.onnx"}, TINY, QuantOptions("int8"), (64, 96),
                             frames, source, sensitivity_max_drop=1e-3, log=print)
    table = record["sensitivity"]
    assert set(table) == {block_of(scopes[n]) for n in placement(det)["quantize"]}
    for s in table.values():
        assert 0.5 < s["frame_queries_cosine"] <= 1 + 1e-9 and 0.5 < s["mask_features_cosine"] <= 1 + 1e-9
    assert record["kept_fp32_blocks"] == sensitive_blocks(table, 1e-3)
    q = onnx.load(str(out / "frame_detector.onnx"))
    quantized_blocks = {block_of(scopes[n]) for n in _dq_consumers(q) if n in scopes}
    assert quantized_blocks and not quantized_blocks & set(record["kept_fp32_blocks"])
    md = (out / "quant_placement.md").read_text()
    assert "| block (quantized alone) |" in md and "stay fp32: " in md
    assert all(f"| {b} |" in md for b in table)
    # a limit no block meets would quantize nothing: refused with the fix, not a Q/DQ-free "int8" graph
    shutil.copy(exported("tiny") / "frame_detector.onnx", out)
    with pytest.raises(QuantizeError, match=r"--sensitivity 1e-12 keeps every block in fp32.*raise MAX_DROP"):
        quantize_export(out, {"frame_detector": "frame_detector.onnx"}, TINY, QuantOptions("int8"), (64, 96),
                        frames, source, sensitivity_max_drop=1e-12, log=print)


def _dq_consumers(model: onnx.ModelProto) -> set[str]:
    """Names of the nodes that read a DequantizeLinear output."""
    dq_out = {o for n in model.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    return {n.name for n in model.graph.node if set(n.input) & dq_out}


@pytest.mark.parametrize("precision", ["int8", "fp8"])
def test_quantize_export_follows_the_placement(tmp_path, precision):
    """Quantize a copy of the shared fp32 export on 3 synthetic frames: Q/DQ feed exactly the placed nodes, the
    excluded ones read no DQ output, and the detector stays close to fp32 on the calibration frames (fp8 runs
    in ONNX Runtime only with session.disable_quant_qdq)."""
    out = tmp_path / "q"
    shutil.copytree(exported("tiny"), out)
    place = placement(onnx.load(str(out / "frame_detector.onnx")))
    frames, source = sample_frames(None, TINY, 3)
    record = quantize_export(out, {"frame_detector": "frame_detector.onnx", "vita_head": "vita_head.onnx"}, TINY,
                             QuantOptions(precision), (64, 96), frames, source, log=print)
    q = onnx.load(str(out / "frame_detector.onnx"))
    consumers = _dq_consumers(q)
    quantized = {n.name for n in q.graph.node if n.op_type in ("Conv", "MatMul", "Gemm")} & consumers
    assert quantized and quantized <= set(place["quantize"])
    assert not consumers & set(place["exclude"])
    # int8 quantizes every placed node; ModelOpt's fp8 mode leaves some small Convs alone (measured: 24 of 32)
    assert len(quantized) >= (0.9 if precision == "int8" else 0.5) * len(place["quantize"])
    assert not _dq_consumers(onnx.load(str(out / "vita_head.onnx")))  # VITA graph untouched
    calib = np.load(out / "calibration.npz")
    assert calib["images"].shape == (3, 3, 64, 96) and calib["frame_queries"].shape[0] == 3
    # fp8 runs in ORT with disable_quant_qdq and every graph optimisation off (ort_session_options)
    assert record["calibration_parity"]["frame_queries_cosine"] > 0.99, record
    placement_json = json.loads((out / "quant_placement.json").read_text())
    assert placement_json["graphs"]["frame_detector"]["quantize"] == place["quantize"]
    if precision == "fp8":
        assert any(i.data_type == onnx.TensorProto.FLOAT8E4M3FN for i in q.graph.initializer
                   if i.name in {x for n in q.graph.node for x in n.input})
        sess = ort.InferenceSession(str(out / "frame_detector.onnx"), ort_session_options("fp8"),
                                    providers=["CPUExecutionProvider"])
        assert np.isfinite(sess.run(None, {"images": calib["images"][:1]})[0]).all()
        assert record["cpu_int8"] == {}
        return
    # int8: the CPU provider's twin (U8S8) quantizes the same nodes, and ONNX Runtime really runs fused 8-bit
    # kernels on it (QLinearConv with uint8 activations), while the TensorRT graph keeps fp32 Conv between Q/DQ
    twin_file = record["cpu_int8"]["frame_detector"]["file"]
    twin = onnx.load(str(out / twin_file))
    twin_quantized = {n.name for n in twin.graph.node if n.op_type in ("Conv", "MatMul", "Gemm")} & _dq_consumers(twin)
    assert twin_quantized <= set(place["quantize"]) and len(twin_quantized) >= 0.9 * len(place["quantize"])
    assert any(i.data_type == onnx.TensorProto.UINT8 for i in twin.graph.initializer)  # unsigned activations
    assert record["calibration_parity_cpu_int8"]["frame_queries_cosine"] > 0.99, record

    def fused_ops(path):
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        so.optimized_model_filepath = str(tmp_path / "optimized.onnx")
        ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        return [n.op_type for n in onnx.load(str(tmp_path / "optimized.onnx")).graph.node]

    convs = sum(n.op_type == "Conv" and n.name in place["quantize"] for n in q.graph.node)
    assert fused_ops(out / twin_file).count("QLinearConv") >= 0.9 * convs
    assert fused_ops(out / "frame_detector.onnx").count("QLinearConv") == 0


def test_int8_export_cli_end_to_end(tmp_path, capsys):
    """`export --precision int8 --calib FRAMES` writes Q/DQ graphs, calibration.npz (hash in the manifest) and the
    placement; `verify` passes it with the int8 tolerances."""
    rng = np.random.default_rng(0)
    video = tmp_path / "clip"
    video.mkdir()
    for i in range(4):
        cv2.imwrite(str(video / f"{i:05d}.jpg"), rng.integers(0, 255, (72, 100, 3), dtype=np.uint8))
    ckpt = save_checkpoint(tmp_path / "tiny.pth", random_model("tiny"))
    out = tmp_path / "export"
    rc = export_main(["--config", "tiny", "--checkpoint", str(ckpt), "--out-dir", str(out), "--deform-attn",
                      "native", "--precision", "int8", "--height", "64", "--width", "96", "--max-frames", "8",
                      "--max-batch", "2", "--graphs", "frame_detector", "vita_head", "--calib", str(video),
                      "--calib-frames", "2"])
    assert rc == 0, capsys.readouterr().err
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["precision"] == "int8"
    from vita_deploy.files import file_sha256
    assert manifest["quantization"]["calibration"]["sha256"] == file_sha256(out / "calibration.npz")
    assert manifest["quantization"]["calib_frames"] == 2 and "1 videos" in manifest["quantization"]["calib_source"]
    assert (out / "quant_placement.md").is_file()
    twin = manifest["graphs"]["frame_detector"]["cpu_int8"]
    assert twin["sha256"] == file_sha256(out / twin["file"]) and "U8S8" in twin["format"]
    assert "cpu_int8" not in manifest["graphs"]["vita_head"]  # the VITA graph stays fp32: no twin
    for int8_graph, ran in (("auto", "CPU twin"), ("tensorrt", "S8S8 Q/DQ graphs TensorRT builds")):
        rc = verify.main(["--export", str(out), "--checkpoint", str(ckpt), "--device", "cpu", "--int8-graph",
                          int8_graph])
        printed = capsys.readouterr().out
        assert rc == 0, printed
        assert "PASS" in printed and ran in printed
    # a replaced twin is refused like a replaced graph (exit 2, names the file)
    (out / twin["file"]).write_bytes(b"not onnx")
    assert verify.main(["--export", str(out), "--checkpoint", str(ckpt), "--device", "cpu"]) == 2
    assert f"{twin['file']} changed since" in capsys.readouterr().err


@pytest.mark.parametrize("args, message", [
    (["--precision", "fp8", "--calib-method", "entropy"], "--calib-method entropy is not available for --precision fp8"),
    (["--precision", "int8", "--deform-attn", "plugin"], "needs --deform-attn native"),
    (["--precision", "int8", "--config", "r50"], "missing calibration data for --config r50"),
])
def test_refusals(tmp_path, capsys, args, message):
    full = ["--out-dir", str(tmp_path / "out"), "--deform-attn", "native", "--graphs", "vita_head", *args]
    assert export_main(full) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_refuses_calibration_folder_without_frames(tmp_path, capsys):
    empty = tmp_path / "calib"
    (empty / "video1").mkdir(parents=True)  # a folder whose only video folder has no frames
    assert export_main(["--out-dir", str(tmp_path / "out"), "--deform-attn", "native", "--precision", "int8",
                        "--calib", str(empty), "--graphs", "vita_head"]) == 2
    err = capsys.readouterr().err
    assert "holds no frames" in err and str(empty / "video1") in err
    assert not (tmp_path / "out" / "manifest.json").exists()
    (tmp_path / "nothing").mkdir()
    with pytest.raises(QuantizeError, match="holds no videos or frames"):
        sample_frames([tmp_path / "nothing"], TINY, 2)  # an empty folder


def test_calibration_samples_across_videos(tmp_path):
    """N frames spread over all videos (in proportion to length), pre-processed onto the opt canvas."""
    for v, n in (("a", 6), ("b", 2)):
        (tmp_path / v).mkdir()
        for i in range(n):
            cv2.imwrite(str(tmp_path / v / f"{i}.png"), np.full((40, 60, 3), 10 * i + (100 if v == "b" else 0),
                                                                np.uint8))
    frames, source = sample_frames([tmp_path], TINY, 4)
    assert len(frames) == 4 and "2 videos" in source
    assert any(f.mean() >= 100 for f in frames) and any(f.mean() < 100 for f in frames)
    images = calibration_images(frames, TINY, (160, 288))
    assert images.shape == (4, 3, 160, 288) and images.dtype == np.float32
