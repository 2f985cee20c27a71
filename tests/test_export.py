"""ONNX export: dynamic height and width, agreement with torch, the onnxruntime backend, int8."""

from __future__ import annotations

import shutil

import cv2
import numpy as np
import onnx
import pytest
import torch

from polypseg import metrics, runtime
from polypseg.data import load_pair
from polypseg.media import read_image
from polypseg.errors import PolypsegError
from polypseg.export import compare_int8, export_onnx, side_pairs, spread
from polypseg.model import build_model, load_checkpoint, save_checkpoint
from polypseg.predict import Predictor, resolve_model
from polypseg.runtime import ONNX_SHA256_KEY, file_sha256, int8_caveat, onnx_metadata, ort_session
from polypseg.transforms import to_input

TOL = 1e-3


@pytest.fixture
def frames(data_dir):
    real = [read_image(data_dir / "images" / f"{i}.png") for i in ("010", "250", "480")]
    return real + [cv2.resize(real[0], (270, 350), interpolation=cv2.INTER_AREA)]  # odd and portrait


@pytest.fixture
def exported(tiny_checkpoint, data_dir):
    return export_onnx(tiny_checkpoint, check_frames=2, data=data_dir, verbose=False)


def test_export_matches_torch_at_two_input_sizes(tiny_checkpoint, data_dir, frames, capsys):
    path = export_onnx(tiny_checkpoint, check_frames=2, data=data_dir)
    assert path == tiny_checkpoint / "best.onnx"
    printed = capsys.readouterr().out
    assert "max abs difference" in printed and "64x64, 64x96" in printed

    model, cfg = load_checkpoint(tiny_checkpoint)
    session = ort_session(path)
    # the tiny model's own size, the odd frame's fitted size, and a much larger input
    inputs = [to_input(frames[0], cfg)[0][None], to_input(frames[3], cfg)[0][None]]
    inputs.append(np.random.default_rng(0).normal(size=(2, 3, 160, 224)).astype(np.float32))
    shapes = set()
    for x in inputs:
        with torch.inference_mode():
            ref = torch.sigmoid(model(torch.from_numpy(x))).numpy()
        out = session.run(None, {"image": x})[0]
        shapes.add(out.shape[2:])
        assert out.shape == ref.shape
        assert np.abs(out - ref).max() < TOL
    assert len(shapes) == 3


def test_onnxruntime_predictor_equals_torch(tiny_checkpoint, exported, frames):
    torch_p = Predictor(tiny_checkpoint)
    for ort_p in (
        Predictor(tiny_checkpoint, backend="onnxruntime"),  # finds best.onnx beside the checkpoint
        Predictor(backend="onnxruntime", onnx_path=exported),  # the ONNX file alone carries the config
    ):
        assert ort_p.config == torch_p.config and ort_p.threshold == torch_p.threshold
        for image in frames:
            prob = ort_p.predict_prob(image)
            assert prob.shape == image.shape[:2]
            assert np.abs(prob - torch_p.predict_prob(image)).max() < TOL
    tta_t, tta_o = Predictor(tiny_checkpoint, tta=True), Predictor(tiny_checkpoint, backend="onnxruntime", tta=True)
    assert np.abs(tta_o.predict_prob(frames[3]) - tta_t.predict_prob(frames[3])).max() < TOL
    assert np.abs(tta_t.predict_prob(frames[3]) - torch_p.predict_prob(frames[3])).max() > 0


def test_stale_export_is_not_used(tiny_checkpoint, tiny_config, exported, frames, tmp_path):
    torch.manual_seed(1)
    other = save_checkpoint(build_model(tiny_config), tiny_config, tmp_path / "other" / "best")
    with pytest.raises(PolypsegError, match="other weights"):
        Predictor(other, backend="onnxruntime", onnx_path=exported)
    # an export of other weights lying beside the checkpoint is ignored: exported again in memory
    shutil.copy(exported, other.with_suffix(".onnx"))
    ort_p = Predictor(other, backend="onnxruntime")
    assert onnx_metadata(ort_p.session)[ONNX_SHA256_KEY] == file_sha256(other)  # not the stale file's
    assert np.abs(ort_p.predict_prob(frames[0]) - Predictor(other).predict_prob(frames[0])).max() < TOL


def test_in_memory_export_without_a_file(tiny_checkpoint, frames):
    ort_p = Predictor(tiny_checkpoint, backend="onnxruntime")
    assert not (tiny_checkpoint / "best.onnx").exists()
    assert np.abs(ort_p.predict_prob(frames[1]) - Predictor(tiny_checkpoint).predict_prob(frames[1])).max() < TOL


def test_metadata_and_errors(tiny_checkpoint, exported, tmp_path):
    meta = {p.key: p.value for p in onnx.load(str(exported)).metadata_props}
    assert meta[ONNX_SHA256_KEY] == file_sha256(tiny_checkpoint / "best.safetensors")
    with pytest.raises(PolypsegError, match=".onnx"):
        export_onnx(tiny_checkpoint, out_path=tmp_path / "model.txt", verbose=False)
    foreign = tmp_path / "foreign.onnx"
    proto = onnx.load(str(exported))
    del proto.metadata_props[:]
    onnx.save(proto, str(foreign))
    with pytest.raises(PolypsegError, match="polypseg export"):
        Predictor(backend="onnxruntime", onnx_path=foreign)
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"not a model")
    with pytest.raises(PolypsegError, match="cannot load"):
        Predictor(backend="onnxruntime", onnx_path=garbage)
    with pytest.raises(PolypsegError, match="onnxruntime"):
        Predictor(tiny_checkpoint, backend="torch", onnx_path=exported)


def test_int8_quantisation_and_report(tiny_checkpoint, data_dir, frames, capsys):
    q = export_onnx(tiny_checkpoint, int8=True, check_frames=1, calibration_frames=4, compare_frames=4, data=data_dir)
    exported = tiny_checkpoint / "best.onnx"
    assert q == tiny_checkpoint / "best.int8.onnx" and exported.is_file()
    printed = capsys.readouterr().out
    assert "train side of the PraNet split" in printed and "per-image Dice" in printed and "latency" in printed
    ops = {n.op_type for n in onnx.load(str(q)).graph.node}
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    int8_p = Predictor(tiny_checkpoint, backend="onnxruntime", onnx_path=q)
    prob = int8_p.predict_prob(frames[0])
    assert prob.shape == frames[0].shape[:2] and np.isfinite(prob).all()
    # the head stays in float: the network's probabilities are not 256 levels of a uint8
    x = int8_p.prepare(frames[0])[0][None]
    assert len(np.unique(ort_session(q).run(None, {"image": x})[0])) > 256
    assert np.abs(prob - Predictor(tiny_checkpoint).predict_prob(frames[0])).max() < 0.1

    report = compare_int8(tiny_checkpoint, exported, q, data=data_dir, max_frames=4)
    assert report["frames"] == 4 and "test side" in report["side"]
    # the fp32 file's Dice is the torch model's on the same four test frames (ONNX matches torch to 1e-3)
    weights = tiny_checkpoint / "best.safetensors"
    cfg = load_checkpoint(weights)[1]
    torch_p = Predictor(tiny_checkpoint)
    counts = []
    for pair in spread(side_pairs(weights, cfg, data_dir, "test")[0], 4):
        image, mask = load_pair(pair)
        counts.append(metrics.confusion(torch_p.predict_prob(image) >= torch_p.threshold, mask))
    assert report["dice_fp32"] == pytest.approx(metrics.reduce(np.stack(counts), "per-image")["dice"], abs=0.02)
    assert abs(report["dice_int8"] - report["dice_fp32"]) < 0.2
    assert report["dice_change"] == pytest.approx(report["dice_int8"] - report["dice_fp32"])
    assert report["speedup"] == pytest.approx(report["ms_fp32"] / report["ms_int8"])


def test_shape_arithmetic_is_what_reads_only_shapes_and_constants():
    from onnx import TensorProto, helper

    from polypseg.export import shape_arithmetic

    nodes = [
        helper.make_node("Shape", ["x"], ["s"], name="shape"),
        helper.make_node("Constant", [], ["one"], name="const", value=helper.make_tensor("v", TensorProto.INT64, [1], [1])),
        helper.make_node("Add", ["s", "one"], ["s1"], name="shape_add"),
        helper.make_node("Relu", ["x"], ["r"], name="relu"),
        helper.make_node("Add", ["r", "x"], ["y"], name="data_add"),
        helper.make_node("Reshape", ["y", "s1"], ["z"], name="reshape"),
    ]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])],
                              [helper.make_tensor_value_info("z", TensorProto.FLOAT, None)])
    assert shape_arithmetic(helper.make_model(graph)) == ["shape", "const", "shape_add"]


def test_output_head_is_from_the_last_convolution_to_the_outputs():
    from onnx import TensorProto, helper

    from polypseg.export import output_head

    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1"),
        helper.make_node("Relu", ["c1"], ["r"], name="relu"),
        helper.make_node("Conv", ["r", "w2"], ["c2"], name="head_conv"),
        helper.make_node("Constant", [], ["scales"], name="scales",
                         value=helper.make_tensor("v", TensorProto.FLOAT, [4], [1, 1, 4, 4])),
        helper.make_node("Resize", ["c2", "", "scales"], ["up"], name="up"),
        helper.make_node("Sigmoid", ["up"], ["prob"], name="sigmoid"),
    ]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("prob", TensorProto.FLOAT, None)])
    assert sorted(output_head(helper.make_model(graph))) == ["head_conv", "scales", "sigmoid", "up"]


def test_int8_caveat_reads_the_cpu():
    x86 = {"architecture": "x86_64", "avx2": True, "avx512_f": True}
    assert "no VNNI" in int8_caveat(x86)
    for vnni in ("avx512_vnni", "avx_vnni", "amx_int8"):
        assert int8_caveat({**x86, vnni: True}) is None
    assert int8_caveat({"architecture": "aarch64", "neon": True, "dot": True}) is None


def test_precision_picks_the_int8_file_beside_the_checkpoint(tiny_checkpoint, data_dir, frames, monkeypatch):
    monkeypatch.setattr(runtime, "int8_caveat", lambda capabilities=None: None)  # a CPU with VNNI
    export_onnx(tiny_checkpoint, int8=True, check_frames=1, calibration_frames=2, compare_frames=2, data=data_dir,
                verbose=False)
    for precision, name in (("int8", "best.int8.onnx"), ("auto", "best.int8.onnx"), ("fp32", "best.onnx")):
        p = Predictor(tiny_checkpoint, backend="onnxruntime", precision=precision)
        assert (p.onnx_path.name, p.precision) == (name, "int8" if "int8" in name else "fp32")
    assert Predictor(tiny_checkpoint, backend="onnxruntime", precision="auto").runtime == "onnxruntime int8 (best.int8.onnx)"
    with pytest.raises(PolypsegError, match="Give one of the two"):
        Predictor(tiny_checkpoint, backend="onnxruntime", precision="int8", onnx_path=tiny_checkpoint / "best.onnx")
    with pytest.raises(PolypsegError, match="add --backend onnxruntime"):
        Predictor(tiny_checkpoint, precision="int8")
    with pytest.raises(PolypsegError, match="Unknown precision"):
        Predictor(tiny_checkpoint, backend="onnxruntime", precision="fp16")
    # on an x86 CPU without VNNI, auto runs fp32 and says why; int8 asked for still runs
    monkeypatch.setattr(runtime, "int8_caveat", lambda capabilities=None: "no VNNI here")
    auto = Predictor(tiny_checkpoint, backend="onnxruntime", precision="auto")
    assert (auto.onnx_path.name, auto.precision) == ("best.onnx", "fp32")
    assert auto.runtime == "onnxruntime (best.onnx; best.int8.onnx not run: no VNNI here (--precision int8 runs it))"
    assert Predictor(tiny_checkpoint, backend="onnxruntime", precision="int8").precision == "int8"
    (tiny_checkpoint / "best.int8.onnx").unlink()
    (tiny_checkpoint / "best.onnx").unlink()
    auto = Predictor(tiny_checkpoint, backend="onnxruntime", precision="auto")
    assert (auto.onnx_path, auto.precision, auto.runtime) == (None, "fp32", "onnxruntime (exported in memory)")
    with pytest.raises(PolypsegError, match="--int8"):
        Predictor(tiny_checkpoint, backend="onnxruntime", precision="int8")


def test_the_shipped_int8_file_is_the_real_time_models(frames):
    """realtime.int8.onnx: made from the shipped weights, its verdict's score (a logit, about 5-15 on these
    polyp frames) within 0.3 of the fp32 network's, its peak probability within a few thousandths, its
    mask nearly the same."""
    fp32 = Predictor("realtime", backend="onnxruntime")
    int8 = Predictor("realtime", backend="onnxruntime", precision="int8")
    assert int8.onnx_path.name == "realtime.int8.onnx" and int8.precision == "int8"
    assert "calibration frames" in onnx_metadata(int8.session)["polypseg.int8"]
    for frame in frames[:3]:
        a, b = fp32.predict(frame), int8.predict(frame)
        assert a.polyp_present and abs(a.score - b.score) < 0.3  # about 2% of a logit near 10
        assert abs(float(a.prob.max()) - float(b.prob.max())) < 0.005
        ma, mb = a.prob >= fp32.threshold, b.prob >= int8.threshold
        assert (ma & mb).sum() * 2 >= 0.9 * (ma.sum() + mb.sum())
    assert Predictor("accurate", backend="onnxruntime", precision="auto").precision == "fp32"  # it ships none


def test_int8_file_of_the_shipped_model_takes_other_input_sizes(tmp_path, frames):
    """EfficientNet-Lite's TF-'same' padding is computed from the input shape; quantised with it, the int8
    file ran at the calibration height only and failed on frames fitted to another one."""
    from polypseg.export import quantize_int8

    fp32 = export_onnx("realtime", out_path=tmp_path / "realtime.onnx", check_frames=1, verbose=False)
    cfg = Predictor("realtime").config
    q = quantize_int8(fp32, tmp_path / "realtime.int8.onnx", [to_input(f, cfg)[0][None] for f in frames[:2]])
    session, ref = ort_session(q), ort_session(fp32)
    for h, w in [(cfg.height, cfg.width), (cfg.height + 32, cfg.width), (cfg.height + 64, cfg.width + 96)]:
        x = to_input(cv2.resize(frames[1], (w, h), interpolation=cv2.INTER_AREA), cfg.replace(height=h, width=w))[0][None]
        out = session.run(None, {"image": x})[0]
        assert out.shape == (1, 1, h, w)
        assert np.abs(out - ref.run(None, {"image": x})[0]).mean() < 0.05


def test_export_removes_an_int8_file_that_fails_at_another_input_size(tmp_path, data_dir, monkeypatch):
    """The quantiser's old behaviour (shape arithmetic quantised too) gives a file that runs at the
    calibration height only: export's own check must catch it and leave no int8 file behind."""
    import polypseg.export as export

    shipped = resolve_model("realtime")
    for suffix in (".safetensors", ".json"):  # the weights without their split: calibrated on data_dir's PraNet side
        shutil.copy(shipped.with_suffix(suffix), tmp_path / f"realtime{suffix}")
    monkeypatch.setattr(export, "shape_arithmetic", lambda model: [])
    with pytest.raises(PolypsegError, match="int8 file failed on the check inputs") as err:
        export_onnx(tmp_path / "realtime.safetensors", int8=True, check_frames=1, calibration_frames=2,
                    compare_frames=2, data=data_dir, verbose=False)
    assert "sizes 128x288, 224x224, 224x288" in str(err.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["realtime.json", "realtime.onnx", "realtime.safetensors"]
