"""The smp model factory, name checks and safetensors + JSON checkpoints."""

from __future__ import annotations

import json
import pickle

import pytest
import torch
from safetensors.torch import load_file

from polypseg.errors import PolypsegError
from polypseg.model import build_model, load_checkpoint, save_checkpoint


def _batch(seed: int = 0) -> torch.Tensor:
    return torch.randn(2, 3, 64, 96, generator=torch.Generator().manual_seed(seed))


def _outputs(model: torch.nn.Module) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(_batch())


def test_forward_and_backward_reach_encoder_and_head(tiny_config):
    torch.manual_seed(0)
    model = build_model(tiny_config).train()
    out = model(_batch())
    assert out.shape == (2, 1, 64, 96)
    torch.nn.functional.binary_cross_entropy_with_logits(out, torch.zeros_like(out)).backward()
    for name in ("encoder", "decoder", "segmentation_head"):
        grads = [p.grad for p in getattr(model, name).parameters() if p.grad is not None]
        assert grads and sum(g.abs().sum() for g in grads) > 0, name


@pytest.mark.parametrize("arch", ["deeplabv3plus", "unet", "fpn"])
def test_architectures_build_and_keep_the_input_size(tiny_config, arch):
    out = _outputs(build_model(tiny_config.replace(arch=arch)))
    assert out.shape == (2, 1, 64, 96)


def test_three_classes_give_three_output_channels(tiny_config):
    assert _outputs(build_model(tiny_config.replace(classes=3))).shape == (2, 3, 64, 96)


@pytest.mark.parametrize(
    "change, close",
    [
        ({"arch": "deeplabv3plu"}, "deeplabv3plus"),
        ({"arch": "unett"}, "unet"),
        ({"encoder": "resnet5"}, "resnet50"),
        ({"encoder": "tu-tf_efficientnet_lite9"}, "tf_efficientnet_lite0"),
    ],
)
def test_unknown_names_list_close_valid_ones(tiny_config, change, close):
    with pytest.raises(PolypsegError, match="Close names") as info:
        build_model(tiny_config.replace(**change))
    assert close in str(info.value)


def test_checkpoint_round_trip_gives_identical_outputs(tmp_path, tiny_config):
    torch.manual_seed(0)
    model = build_model(tiny_config)
    expected = _outputs(model)
    path = save_checkpoint(model, tiny_config, tmp_path / "run" / "best", epoch=3, metrics={"dice": 0.5})
    assert path.name == "best.safetensors" and path.with_suffix(".json").is_file()
    meta = json.loads(path.with_suffix(".json").read_text())
    assert meta["epoch"] == 3 and meta["metrics"] == {"dice": 0.5}
    loaded, cfg = load_checkpoint(tmp_path / "run")
    assert cfg == tiny_config
    assert not loaded.training
    assert torch.equal(_outputs(loaded), expected)


def test_half_checkpoint_is_smaller_and_loads_as_float32(tmp_path, tiny_config):
    torch.manual_seed(0)
    model = build_model(tiny_config)
    expected = _outputs(model)
    full = save_checkpoint(model, tiny_config, tmp_path / "full")
    half = save_checkpoint(model, tiny_config, tmp_path / "half", half=True)
    assert half.stat().st_size < 0.6 * full.stat().st_size
    assert load_file(str(half))["segmentation_head.0.weight"].dtype == torch.float16
    loaded, _ = load_checkpoint(half)
    assert next(loaded.parameters()).dtype == torch.float32
    torch.testing.assert_close(_outputs(loaded), expected, atol=2e-2, rtol=2e-2)


def test_compiled_model_prefix_is_stripped(tmp_path, tiny_config):
    torch.manual_seed(0)
    model = build_model(tiny_config)
    # torch.compile's OptimizedModule keeps the model as `_orig_mod`; a plain wrapper names it the same way
    # without the seconds torch.compile's import costs.
    compiled = torch.nn.Module()
    compiled._orig_mod = model
    assert any(k.startswith("_orig_mod.") for k in compiled.state_dict())
    path = save_checkpoint(compiled, tiny_config, tmp_path / "compiled")
    assert not any(k.startswith("_orig_mod.") for k in load_file(str(path)))
    loaded, _ = load_checkpoint(path)
    assert torch.equal(_outputs(loaded), _outputs(model))


def test_loading_never_unpickles(tiny_checkpoint, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a checkpoint load must not unpickle")

    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    model, cfg = load_checkpoint(tiny_checkpoint)
    assert cfg.encoder == "tu-test_efficientnet"


def test_missing_or_broken_json_is_explained(tiny_checkpoint):
    meta = tiny_checkpoint / "best.json"
    text = meta.read_text()
    meta.write_text(text[: len(text) // 2])  # cut off mid-way, as by a full disk
    with pytest.raises(PolypsegError):
        load_checkpoint(tiny_checkpoint)
    meta.write_text(json.dumps({**json.loads(text), "format": "something-else/9"}))
    with pytest.raises(PolypsegError, match="not a polypseg checkpoint"):
        load_checkpoint(tiny_checkpoint)
    meta.unlink()
    with pytest.raises(PolypsegError, match="best.json"):
        load_checkpoint(tiny_checkpoint / "best.safetensors")


def test_missing_checkpoint_is_explained(tmp_path):
    with pytest.raises(PolypsegError, match="holds no checkpoint"):
        load_checkpoint(tmp_path)
    with pytest.raises(PolypsegError, match="does not exist"):
        load_checkpoint(tmp_path / "nothing.safetensors")
