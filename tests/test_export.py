"""ONNX export: tensor and video parity in ONNX Runtime vs eager, the plugin form, fp16 graphs, the CLI.

Exports are slow (a minute or more each on 2 cores), so each (config, mode, precision) is exported once per
test run by `exported` (and the shipped checkpoint by `exported_trained`) and shared with the other test files
(engine builds, benchmarks, verify, serving, the bad-input corpus). Parity is reported per output as max abs error
and relative error = max abs error / max |eager|; the worst case is asserted against the thresholds below.
"""
from __future__ import annotations

import atexit
import fcntl
import functools
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from pycocotools import mask as mask_utils
from scipy.optimize import linear_sum_assignment

from vita_deploy.config import get_config
from vita_deploy.export import ExportError, ExportOptions, export_model, load_manifest
from vita_deploy.runtime.ort_export import ort_engine, ort_graphs
from vita_deploy.commands.export import main as cli_main
from vita_deploy.export.plugin import PLUGIN_OP, with_plugin_function
from vita_deploy.loading import DEFAULT_CHECKPOINT, load_model
from vita_deploy.pipeline.inference import eager_graphs, run_video
from vita_deploy.modeling.checkpoint import load_checkpoint, save_checkpoint
from vita_deploy.modeling.model import build_model
from vita_deploy.modeling.ms_deform_attn import ms_deform_attn

FP32_REL = 1e-4  # fp32 graph vs fp32 eager
FP16_REL = 1e-2  # fp16 graph (fp32 islands) vs fp32 eager, ONNX Runtime CPU (measured worst 5e-3)
# ~600 MB of ONNX files per session. Under pytest-xdist (`make test` runs 2 workers) the workers share one folder
# named after the run, so each export is made once per run; conftest.py removes it when the run ends.
if os.environ.get("PYTEST_XDIST_TESTRUNUID"):
    from conftest import shared_export_root
    EXPORT_ROOT = shared_export_root(os.environ["PYTEST_XDIST_TESTRUNUID"])
    EXPORT_ROOT.mkdir(exist_ok=True)
else:
    EXPORT_ROOT = Path(tempfile.mkdtemp(prefix="vita_export_test_"))
    atexit.register(shutil.rmtree, EXPORT_ROOT, ignore_errors=True)
TINY_SIZES = ((1, 64, 64), (2, 96, 160), (3, 160, 224))
TINY_FRAMES = (1, 6, 7, 13, 20)


def random_model(name: str):
    torch.manual_seed(0)
    return build_model(get_config(name)).eval()


def exported(name: str, mode: str = "native", precision: str = "fp32", graphs: str = "frame_detector,vita_head"
             ) -> Path:
    """Export the seeded random `name` model once per session. r50 at a fixed 128x128 (through the CLI), tiny
    with dynamic N, H, W and T."""
    return _exported(name, mode, precision, graphs)  # positional: one cache entry however it is called


def shared_export(key: str, make: Callable[[Path], None]) -> Path:
    """EXPORT_ROOT/key, made by `make(folder)` once per test run: the first process to ask makes it under a file
    lock (the other xdist worker waits for it), into a temporary folder renamed when complete."""
    out = EXPORT_ROOT / key
    with open(EXPORT_ROOT / f"{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not out.is_dir():
            tmp = EXPORT_ROOT / f"{key}.partial"
            shutil.rmtree(tmp, ignore_errors=True)
            make(tmp)
            tmp.rename(out)
    return out


@functools.lru_cache(maxsize=None)
def _exported(name: str, mode: str, precision: str, graphs: str) -> Path:
    return shared_export(f"{name}_{mode}_{precision}_{graphs.replace(',', '_')}",
                         lambda out: _export(name, mode, precision, graphs, out))


def _export(name: str, mode: str, precision: str, graphs: str, out: Path) -> None:
    if name == "r50":
        assert graphs == "frame_detector,vita_head"
        rc = cli_main(["--config", "r50", "--out-dir", str(out), "--deform-attn", mode, "--precision", precision,
                       "--height", "128", "--width", "128", "--max-frames", "16", "--graphs", "frame_detector",
                       "vita_head"])  # the mask-feature graph is tested on tiny (tests/test_streaming.py)
        assert rc == 0
    else:
        export_model(random_model(name), out, ExportOptions(deform_attn=mode, precision=precision, max_frames=64),
                     log=print, graphs=tuple(graphs.split(",")))


@functools.lru_cache(maxsize=None)
def exported_trained() -> Path:
    """The shipped trained tiny checkpoint exported once per session (dynamic N, H, W and T, the checkpoint's
    sha256 in the manifest); shared with tests/test_bad_inputs.py's workspace."""
    return shared_export("tiny_trained_native_fp32", lambda out: export_model(
        load_checkpoint(DEFAULT_CHECKPOINT)[0], out, ExportOptions(deform_attn="native", max_frames=64),
        checkpoint=DEFAULT_CHECKPOINT))  # all three graphs: verify also checks recompute mode


def errors(out: torch.Tensor, ref: torch.Tensor) -> tuple[float, float]:
    abs_err = (out.float() - ref.float()).abs().max().item()
    return abs_err, abs_err / max(ref.abs().max().item(), 1e-12)


def check_parity(export_dir: Path, model, sizes, frames, threshold: float) -> dict:
    """Run both graphs in ORT and eager at every size (the frame detector only when `frames` is empty); print
    every output's errors, assert the worst."""
    detector = ort_engine(export_dir, "frame_detector")
    vita = ort_engine(export_dir, "vita_head") if frames else None
    cfg = model.cfg
    report = {}
    g = torch.Generator().manual_seed(1)

    def compare(engine, module, feed: str, x: torch.Tensor, names: tuple[str, str], label: str) -> None:
        with torch.no_grad():
            ref = module(x)
        out = engine.infer({feed: x})
        for name, r in zip(names, ref):
            assert out[name].shape == r.shape
            report[f"{label} {name}"] = errors(out[name], r)

    for n, h, w in sizes:
        compare(detector, model.frame_detector, "images", torch.randn(n, 3, h, w, generator=g),
                ("frame_queries", "mask_features"), f"frame_detector N={n} {h}x{w}")
    for t in frames:
        compare(vita, model.vita_head, "frame_queries",
                torch.randn(t, cfg.frame_decoder.num_queries, cfg.vita.hidden_dim, generator=g),
                ("class_logits", "mask_embed"), f"vita_head T={t}")
    print(f"\nparity {export_dir.name}:\n" + "\n".join(f"  {k}: max abs {a:.2e}, rel {r:.2e}"
                                                   for k, (a, r) in report.items()))
    worst = max(report.items(), key=lambda kv: kv[1][1])
    assert worst[1][1] < threshold, f"worst: {worst}"
    return report


# -- deformable attention forms ---------------------------------------------------------------------------------

def test_plugin_function_in_ort_equals_reference():
    """One plugin node, run in ORT through its standard-op function body, vs the grid_sample reference,
    with locations outside the map and every dtype/shape input exactly as NVIDIA's plugin takes them."""
    g = torch.Generator().manual_seed(3)
    shapes = [(6, 9), (3, 5), (2, 3)]
    value = torch.randn(2, sum(h * w for h, w in shapes), 4, 8, generator=g)
    locations = torch.rand(2, 11, 4, 3, 4, 2, generator=g) * 1.4 - 0.2
    weights = torch.rand(2, 11, 4, 3, 4, generator=g)
    spatial = np.array(shapes, np.int32)
    starts = np.array([0, 54, 69], np.int32)
    names = ["value", "spatial_shapes", "level_start_index", "sampling_locations", "attention_weights"]
    f, i32 = onnx.TensorProto.FLOAT, onnx.TensorProto.INT32
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node(PLUGIN_OP, names, ["out"], domain="trt", plugin_version="2")], "msda",
        [onnx.helper.make_tensor_value_info(n, t, None) for n, t in zip(names, (f, i32, i32, f, f))],
        [onnx.helper.make_tensor_value_info("out", f, None)])
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 18),
                                                         onnx.helper.make_opsetid("trt", 1)])
    session = ort.InferenceSession(with_plugin_function(model).SerializeToString())
    out = session.run(None, dict(zip(names, (value.numpy(), spatial, starts, locations.numpy(), weights.numpy()))))[0]
    ref = ms_deform_attn(value, torch.tensor(shapes), torch.tensor(starts), locations, weights)
    np.testing.assert_allclose(out, ref.numpy(), rtol=1e-5, atol=1e-5)


# -- fp32 parity ------------------------------------------------------------------------------------------------

def test_tiny_fp32_parity_random_weights():
    check_parity(exported("tiny"), random_model("tiny"), TINY_SIZES, TINY_FRAMES, FP32_REL)


def test_tiny_fp32_parity_trained_weights(tmp_path):
    if not DEFAULT_CHECKPOINT.is_file():
        pytest.skip(f"the trained tiny checkpoint {DEFAULT_CHECKPOINT} is not shipped yet")
    model = load_checkpoint(DEFAULT_CHECKPOINT)[0]
    export_dir = exported_trained()
    check_parity(export_dir, model, TINY_SIZES[:2], (1, 7, 13), FP32_REL)
    # Video parity on labelled synthetic videos (a seed disjoint from training): matched mask IoU and AP.
    import json

    from vita_deploy.commands import verify
    from vita_deploy.data.synthetic import generate_split
    generate_split(tmp_path / "data", "valid", 4, seed=4242, progress=False)
    report = tmp_path / "report.json"
    assert verify.main(["--export", str(export_dir), "--videos", str(tmp_path / "data"), "--device", "cpu",
                        "--report", str(report)]) == 0
    video = json.loads(report.read_text())["video"]
    print(f"\ntrained tiny, ORT vs eager on 4 videos: min matched IoU {video['min_matched_iou']:.4f}, "
          f"AP {video['ap_eager']:.2f} vs {video['ap_backend']:.2f}")
    assert video["min_matched_iou"] >= 0.99 and abs(video["delta_ap"]) <= 0.1


def test_r50_fp32_parity_one_size():
    check_parity(exported("r50"), load_model(None, "r50"), ((1, 128, 128),), (1, 7, 13), FP32_REL)


def test_manifest_describes_the_graphs():
    m = load_manifest(exported("tiny"))
    fd, vh = m["graphs"]["frame_detector"], m["graphs"]["vita_head"]
    assert fd["inputs"] == [{"name": "images", "dtype": "float32", "shape": ["batch", 3, "height", "width"]}]
    assert fd["outputs"] == [{"name": "frame_queries", "dtype": "float32", "shape": ["batch", 20, 64]},
                             {"name": "mask_features", "dtype": "float32", "shape": ["batch", 64, "height/4", "width/4"]}]
    assert vh["inputs"][0]["shape"] == ["num_frames", 20, 64]
    assert [(o["name"], o["shape"]) for o in vh["outputs"]] == [("class_logits", [20, 6]), ("mask_embed", [20, 64])]
    assert fd["dims"]["batch"] == {"min": 1, "opt": 18, "max": 18}
    assert fd["dims"]["height"] == {"min": 64, "opt": 160, "max": 320, "multiple_of": 32}
    assert vh["dims"]["num_frames"] == {"min": 1, "opt": 36, "max": 64}
    assert vh["profiles"]["frame_queries"] == {"min": [1, 20, 64], "opt": [36, 20, 64], "max": [64, 20, 64]}
    assert m["deform_attn"] == "native" and m["precision"] == "fp32" and m["config"]["name"] == "tiny"
    assert m["opset"] >= 17 and m["checkpoint_sha256"] is None and m["exporter"]["torch"] == torch.__version__
    r50 = load_manifest(exported("r50"))
    assert r50["graphs"]["frame_detector"]["profiles"]["images"]["max"] == [18, 3, 128, 128]


# -- video parity -----------------------------------------------------------------------------------------------

def video_iou(a: list[dict], b: list[dict]) -> float:
    """Mask IoU over a whole video: per-frame RLEs -> sum of intersections / sum of unions (1.0 if both empty)."""
    ma, mb = mask_utils.decode(a).astype(bool), mask_utils.decode(b).astype(bool)  # (H, W, T)
    union = (ma | mb).sum()
    return 1.0 if union == 0 else float((ma & mb).sum() / union)


def test_video_parity_ort_vs_eager():
    from vita_deploy.data.synthetic import make_video

    model = random_model("tiny")
    onnx_graphs, eager = ort_graphs(exported("tiny")), eager_graphs(model)
    rng = np.random.default_rng(5)
    for num_frames in (8, 13):
        frames = make_video(rng, num_frames, num_frames).frames
        ours = run_video(list(frames), *onnx_graphs, model.cfg)
        ref = run_video(list(frames), *eager, model.cfg)
        iou = np.array([[video_iou(a, b) for b in ours.segmentations] for a in ref.segmentations])
        rows, cols = linear_sum_assignment(-iou)
        print(f"\nvideo T={num_frames}: matched IoU min {iou[rows, cols].min():.4f}, "
              f"max |dscore| {max(abs(ref.scores[r] - ours.scores[c]) for r, c in zip(rows, cols)):.2e}")
        assert len(rows) == len(ref.scores) == len(ours.scores)
        for r, c in zip(rows, cols):
            assert iou[r, c] >= 0.99 and ref.labels[r] == ours.labels[c]
            assert abs(ref.scores[r] - ours.scores[c]) < 1e-3


# -- plugin mode -------------------------------------------------------------------------------------------------

def test_plugin_nodes_follow_nvidia_layout_and_pass_the_checker():
    path = exported("tiny", "plugin", graphs="frame_detector") / "frame_detector.onnx"
    model = onnx.load(path)
    nodes = [n for n in model.graph.node if n.op_type == PLUGIN_OP]
    assert len(nodes) == get_config("tiny").pixel_decoder.num_layers
    assert not any(n.op_type == "GridSample" for n in model.graph.node)
    infos = {v.name: v.type.tensor_type for v in model.graph.value_info}
    for node in nodes:
        assert node.domain == "trt" and {a.name: a.s.decode() for a in node.attribute} == {"plugin_version": "2"}
        assert len(node.input) == 5 and len(node.output) == 1
        types = [infos[i].elem_type for i in node.input]
        assert types == [onnx.TensorProto.FLOAT, onnx.TensorProto.INT32, onnx.TensorProto.INT32,
                         onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT]
        assert [len(infos[i].shape.dim) for i in node.input] == [4, 2, 1, 6, 5]
        assert len(infos[node.output[0]].shape.dim) == 4
    assert {o.domain: o.version for o in model.opset_import}["trt"] == 1
    manifest = load_manifest(path.parent)
    assert manifest["graphs"]["frame_detector"]["custom_ops"][0]["count"] == len(nodes)
    # A fresh process that never registered our schema: full check with strict shape inference passes.
    code = ("import onnx, sys; m = onnx.load(sys.argv[1]); onnx.checker.check_model(m, full_check=True); "
            "onnx.shape_inference.infer_shapes(m, check_type=True, strict_mode=True, data_prop=True); print('ok')")
    proc = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=120)
    assert proc.stdout.strip() == "ok", proc.stderr[-2000:]


def test_plugin_graph_runs_in_ort_and_equals_native():
    plugin = ort_engine(exported("tiny", "plugin", graphs="frame_detector"), "frame_detector")
    native = ort_engine(exported("tiny"), "frame_detector")
    for n, h, w in TINY_SIZES[:2]:
        x = torch.randn(n, 3, h, w)
        a, b = plugin.infer({"images": x}), native.infer({"images": x})
        for name in ("frame_queries", "mask_features"):
            abs_err, rel = errors(a[name], b[name])
            print(f"\nplugin vs native N={n} {h}x{w} {name}: max abs {abs_err:.2e}, rel {rel:.2e}")
            assert rel < 1e-5


# -- fp16 --------------------------------------------------------------------------------------------------------

def test_fp16_graph_has_fp32_islands_and_float32_io():
    model = onnx.load(exported("tiny", precision="fp16") / "frame_detector.onnx")
    inits = {i.name: i for i in model.graph.initializer}
    nbytes = {dtype: sum(len(i.raw_data) for i in inits.values() if i.data_type == dtype)
              for dtype in (onnx.TensorProto.FLOAT16, onnx.TensorProto.FLOAT)}
    assert nbytes[onnx.TensorProto.FLOAT16] > 0.9 * sum(nbytes.values())  # weights are half precision
    conv_weights = [inits[n.input[1]] for n in model.graph.node if n.op_type == "Conv" and n.input[1] in inits]
    assert conv_weights and all(w.data_type == onnx.TensorProto.FLOAT16 for w in conv_weights)
    types = {v.name: v.type.tensor_type.elem_type for v in list(model.graph.value_info) + list(model.graph.input)}
    for op_type in ("Softmax", "LayerNormalization", "InstanceNormalization", "Floor"):  # fp32 islands
        nodes = [n for n in model.graph.node if n.op_type == op_type]
        assert nodes and all(types[n.input[0]] == onnx.TensorProto.FLOAT for n in nodes), op_type
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    assert all(types[n.input[0]] == onnx.TensorProto.FLOAT16 for n in convs)  # the bulk runs in half
    m = load_manifest(exported("tiny", precision="fp16"))
    assert m["precision"] == "fp16" and m["graphs"]["frame_detector"]["inputs"][0]["dtype"] == "float32"


def test_fp16_parity():
    check_parity(exported("tiny", precision="fp16"), random_model("tiny"), TINY_SIZES[1:], (1, 7, 13), FP16_REL)
    check_parity(exported("r50", precision="fp16"), load_model(None, "r50"), ((1, 128, 128),), (1, 13), FP16_REL)


# -- CLI errors --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("args, message", [
    (["--height", "100", "--width", "128"], "multiple of 32"),
    (["--height", "128"], "both --height and --width"),
    (["--max-frames", "0"], "--max-frames: must be at least 1"),
    (["--config", "r50", "--checkpoint", "/nonexistent/model.pth"], "does not exist"),
])
def test_cli_rejects_bad_arguments(args, message, tmp_path, capsys):
    assert cli_main(["--out-dir", str(tmp_path / "out"), *args]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_cli_rejects_unknown_config_and_unwritable_out_dir(tmp_path, capsys):
    assert cli_main(["--config", "r101", "--out-dir", str(tmp_path)]) == 2
    assert "invalid choice: 'r101'" in capsys.readouterr().err
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ExportError, match="cannot create the output folder"):
        export_model(random_model("tiny"), blocker / "out", ExportOptions())


def test_cli_rejects_a_checkpoint_of_another_config(tmp_path, capsys):
    ckpt = save_checkpoint(tmp_path / "tiny.pth", random_model("tiny"))
    assert cli_main(["--config", "r50", "--checkpoint", str(ckpt), "--out-dir", str(tmp_path / "out")]) == 2
    assert "holds a 'tiny' model, not 'r50" in capsys.readouterr().err
