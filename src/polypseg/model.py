"""Build segmentation networks through smp, and save/load self-describing checkpoints.

A checkpoint is two files side by side: ``NAME.safetensors`` (the weights) and ``NAME.json``
(``{"format", "config", "epoch", "metrics"}``). Loading never unpickles anything.
"""

from __future__ import annotations

import difflib
import json
from pathlib import Path
from typing import Any

import segmentation_models_pytorch as smp
import torch
from safetensors.torch import load_file, save_file

from .config import Config
from .errors import PolypsegError
from .files import atomic_write, atomic_write_text

CHECKPOINT_FORMAT = "polypseg-checkpoint/1"


def architectures() -> list[str]:
    return sorted(smp.MODEL_ARCHITECTURES_MAPPING)


def _close(name: str, valid: list[str]) -> str:
    near = difflib.get_close_matches(name, valid, n=5, cutoff=0.5)
    return f" Close names: {', '.join(near)}." if near else ""


def check_names(arch: str, encoder: str) -> None:
    """Raise a PolypsegError listing close valid names when arch or encoder is unknown."""
    archs = architectures()
    if arch.lower() not in archs:
        raise PolypsegError(
            f"Unknown architecture '{arch}'.{_close(arch.lower(), archs)} Valid: {', '.join(archs)}."
        )
    if encoder.startswith("tu-"):
        import timm

        if not timm.is_model(encoder[3:]):
            names = timm.list_models()
            raise PolypsegError(
                f"Unknown timm encoder '{encoder}'.{_close(encoder[3:], names)} "
                "Any timm model name works behind the 'tu-' prefix (timm.list_models())."
            )
    elif encoder not in smp.encoders.get_encoder_names():
        names = smp.encoders.get_encoder_names()
        raise PolypsegError(
            f"Unknown encoder '{encoder}'.{_close(encoder, names)} "
            "Run `python -c 'import segmentation_models_pytorch as smp; print(smp.encoders.get_encoder_names())'` "
            "for smp's list, or use any timm model as 'tu-<name>'."
        )


def split_output(out) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A model's output -> (mask logits N x C x H x W, image-level head logits N x 1 or None)."""
    return (out[0], out[1]) if isinstance(out, (tuple, list)) else (out, None)


def build_model(cfg: Config, load_weights: bool = True) -> torch.nn.Module:
    """The network ``cfg`` describes; with ``load_weights``, its encoder gets ``cfg.encoder_weights``.
    With ``cfg.aux_head`` it returns ``(mask logits, image logits)`` (``split_output`` takes either)."""
    from .weights import apply_encoder_weights

    check_names(cfg.arch, cfg.encoder)
    model = smp.create_model(
        cfg.arch,
        encoder_name=cfg.encoder,
        encoder_weights=None,  # weights are applied by polypseg.weights, which also works offline
        in_channels=cfg.in_channels,
        classes=cfg.classes,
        # the image-level head: max pooling, so that one small polyp anywhere in the frame can carry it
        aux_params=dict(classes=1, pooling="max", dropout=0.2) if cfg.aux_head else None,
    )
    if load_weights:
        apply_encoder_weights(model, cfg)
    return model


def save_checkpoint(
    model: torch.nn.Module,
    cfg: Config,
    path: str | Path,
    epoch: int | None = None,
    metrics: dict[str, float] | None = None,
    half: bool = False,
) -> Path:
    """Write ``path`` (.safetensors) and its .json beside it, each atomically. Returns the weights path."""
    path = Path(path).with_suffix(".safetensors")
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {}
    for k, v in model.state_dict().items():
        k = k.removeprefix("_orig_mod.")  # torch.compile's wrapper prefix never reaches a file
        v = v.detach().to("cpu").contiguous()
        if half and v.is_floating_point():
            v = v.half()
        state[k] = v
    atomic_write(path, lambda tmp: save_file(state, tmp, metadata={"format": CHECKPOINT_FORMAT}))
    write_checkpoint_meta(path, cfg, epoch, metrics)
    return path


def write_checkpoint_meta(path: str | Path, cfg: Config, epoch: int | None = None,
                          metrics: dict[str, Any] | None = None) -> None:
    """The .json beside the weights ``path`` (format, config, epoch, metrics), atomically; the weights are
    not touched (a new operating point or threshold changes only this file)."""
    meta = {"format": CHECKPOINT_FORMAT, "config": cfg.to_dict(), "epoch": epoch, "metrics": metrics or {}}
    atomic_write_text(Path(path).with_suffix(".json"), json.dumps(meta, indent=2) + "\n")


def resolve_checkpoint(path: str | Path) -> Path:
    """A run folder (its best, else last checkpoint) or a .safetensors/.json file -> the weights file."""
    p = Path(path)
    if p.is_dir():
        for name in ("best.safetensors", "last.safetensors", "model.safetensors"):
            if (p / name).is_file():
                return p / name
        raise PolypsegError(
            f"'{p}' holds no checkpoint (best.safetensors or last.safetensors). "
            "Pass a run folder written by `polypseg train`, or a .safetensors file with its .json beside it."
        )
    if p.suffix == ".json":
        p = p.with_suffix(".safetensors")
    if not p.is_file():
        raise PolypsegError(f"Checkpoint '{p}' does not exist. Pass a run folder or a .safetensors file.")
    if not p.with_suffix(".json").is_file():
        raise PolypsegError(
            f"Checkpoint '{p}' has no '{p.with_suffix('.json').name}' beside it, so the model cannot be rebuilt. "
            "Checkpoints written by polypseg always come as a pair."
        )
    return p


def read_checkpoint_meta(path: str | Path) -> dict[str, Any]:
    """The checkpoint's JSON (format, config, epoch, metrics)."""
    meta_path = resolve_checkpoint(path).with_suffix(".json")
    try:
        meta = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise PolypsegError(
            f"'{meta_path}' is damaged ({err}); the model cannot be rebuilt from it. Use another checkpoint "
            "(a run folder keeps best and last) or save this one again."
        ) from None
    if not isinstance(meta, dict) or meta.get("format") != CHECKPOINT_FORMAT:
        raise PolypsegError(f"'{meta_path}' is not a polypseg checkpoint description (format {CHECKPOINT_FORMAT}).")
    return meta


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, Config]:
    """Rebuild the model a checkpoint describes and load its weights; returns ``(model.eval(), config)``."""
    weights = resolve_checkpoint(path)
    meta = read_checkpoint_meta(weights)
    cfg = Config.from_dict(meta["config"])
    model = build_model(cfg, load_weights=False)
    state = load_file(str(weights))
    dtype = next(iter(model.state_dict().values())).dtype
    state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    model.load_state_dict(state)
    return model.to(device).eval(), cfg
