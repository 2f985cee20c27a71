"""Training on PyTorch Lightning: one LightningModule, one callback that writes the run folder, `train()`.

Run folder (see docs/DESIGN.md): config.json, split.json, metrics.csv, curve.png, best/last checkpoints
(safetensors + JSON), resume.ckpt (Lightning's full state, only for --resume), logs/ (Lightning's step
log of each attempt: metrics.csv, then resume-N/metrics.csv; TensorBoard).
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import logging
import math
import os
import time
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import segmentation_models_pytorch as smp
import torch
from lightning.pytorch.callbacks import Callback, EarlyStopping, EMAWeightAveraging
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from torch.utils.data import DataLoader

from .calibration import finish_run
from .config import Config
from .data import SegmentationDataset, index_dataset, polyp_free_views
from .datacheck import usable_pairs
from .errors import PolypsegError
from .files import atomic_write
from .metrics import roc_auc
from .model import build_model, load_checkpoint, read_checkpoint_meta, save_checkpoint, split_output
from .splits import resolve_split, save_split
from .transforms import eval_transform, train_transform

# Lightning's start-up tips and a deprecation inside its own code say nothing to a polypseg user.
QUIET_LOGGERS = ("lightning.pytorch.utilities.rank_zero", "lightning.pytorch.trainer.connectors.checkpoint_connector")


@contextlib.contextmanager
def _quiet_lightning():
    """Lightning's tips and that deprecation silenced during training only: importing or calling polypseg
    leaves the caller's logging levels and warnings filters as they were."""
    loggers = [logging.getLogger(name) for name in QUIET_LOGGERS]
    levels = [log.level for log in loggers]
    for log in loggers:
        log.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*isinstance\\(treespec, LeafSpec\\).*")
            # a run without a validation side says so on every epoch line ("no validation side")
            warnings.filterwarnings("ignore", message=".*validation_step` but have no `val_dataloader.*")
            yield
    finally:
        for log, level in zip(loggers, levels):
            log.setLevel(level)

LOSSES = ("dice+bce", "structure", "dice", "bce", "focal", "lovasz", "tversky")


class StructureLoss(torch.nn.Module):
    """PraNet's loss: BCE and soft IoU, each weighted up to 6x near the polyp's outline (where a pixel's
    label differs from its 31x31 neighbourhood's mean), so that boundaries count more than interiors."""

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        weight = 1 + 5 * torch.abs(torch.nn.functional.avg_pool2d(target, 31, stride=1, padding=15) - target)
        bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, target, reduction="none")
        wbce = (weight * bce).sum((2, 3)) / weight.sum((2, 3))
        prob = torch.sigmoid(logits)
        inter = (prob * target * weight).sum((2, 3))
        union = ((prob + target) * weight).sum((2, 3))
        wiou = 1 - (inter + 1) / (union - inter + 1)
        return (wbce + wiou).mean()


def make_loss(cfg: Config) -> torch.nn.Module:
    mode = "binary" if cfg.classes == 1 else "multiclass"
    parts = {
        "dice": lambda: smp.losses.DiceLoss(mode, from_logits=True),
        "bce": lambda: smp.losses.SoftBCEWithLogitsLoss() if mode == "binary" else smp.losses.SoftCrossEntropyLoss(smooth_factor=0.0),
        "focal": lambda: smp.losses.FocalLoss(mode),
        "lovasz": lambda: smp.losses.LovaszLoss(mode),
        "tversky": lambda: smp.losses.TverskyLoss(mode, from_logits=True),
        "structure": StructureLoss,
    }
    names = cfg.loss.split("+")
    if cfg.loss not in LOSSES and not all(n in parts for n in names):
        raise PolypsegError(f"Unknown loss '{cfg.loss}'. Valid: {', '.join(LOSSES)} (or parts joined by '+').")
    if "structure" in names and mode != "binary":
        raise PolypsegError("The structure loss is for one class (polyp vs background); use dice+bce with --classes > 1.")
    return LossSum([parts[n]() for n in names], multiclass=mode == "multiclass")


class LossSum(torch.nn.Module):
    """The sum of smp losses; multi-class targets arrive as 1 x H x W masks of class indices."""

    def __init__(self, terms: list[torch.nn.Module], multiclass: bool):
        super().__init__()
        self.terms = torch.nn.ModuleList(terms)
        self.multiclass = multiclass

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.multiclass:
            target = target[:, 0].long()
        return sum(t(logits, target) for t in self.terms)


def weighted_mask_loss(loss: torch.nn.Module, logits: torch.Tensor, mask: torch.Tensor, polyp: torch.Tensor,
                       negatives_weight: float) -> torch.Tensor:
    """The mask loss of polyp frames plus ``negatives_weight`` times that of polyp-free frames (each over
    its own frames of the batch; a batch without one kind adds nothing for it)."""
    pos = polyp > 0.5
    total = logits.new_zeros(())
    if pos.any():
        total = total + loss(logits[pos], mask[pos])
    if negatives_weight > 0 and (~pos).any():
        total = total + negatives_weight * loss(logits[~pos], mask[~pos])
    return total


# What must match between a fine-tuning run and the model it starts from (``Config.init``).
NETWORK_FIELDS = ("arch", "encoder", "classes", "in_channels")
HEAD_PREFIX = "classification_head."  # smp's image-level head: may be added (or dropped) when fine-tuning


def init_weights(model: torch.nn.Module, cfg: Config) -> Path:
    """Load the weights of ``cfg.init`` (a run folder, checkpoint or shipped model's name) into ``model``,
    the same network; an image-level head missing on one side starts fresh (or is left out). Returns the
    weights file."""
    from safetensors.torch import load_file

    from .predict import resolve_model

    weights = resolve_model(cfg.init)
    theirs = Config.from_dict(read_checkpoint_meta(weights)["config"])
    differ = [f"{f} {getattr(theirs, f)!r} here {getattr(cfg, f)!r}" for f in NETWORK_FIELDS
              if getattr(theirs, f) != getattr(cfg, f)]
    if differ:
        raise PolypsegError(
            f"--init {cfg.init} is another network ({'; '.join(differ)}). Fine-tuning starts from the same "
            "network: pass its --arch and --encoder, or leave out --init to start from encoder weights."
        )
    own = model.state_dict()
    state = {k: v.to(own[k].dtype) for k, v in load_file(str(weights)).items() if k in own}
    missing, _ = model.load_state_dict(state, strict=False)
    left = [k for k in missing if not k.startswith(HEAD_PREFIX)]
    if left:
        raise PolypsegError(f"--init {cfg.init} lacks {len(left)} weights of this network (e.g. {left[0]}).")
    return weights


def load_teacher(cfg: Config) -> tuple[torch.nn.Module, tuple[int, int]] | None:
    """The frozen teacher of ``cfg.distill`` and its input size (height, width), or None. The teacher must
    take the same normalised input (mean, std) and predict one class."""
    if cfg.distill is None:
        return None
    from .predict import resolve_model

    weights = resolve_model(cfg.distill)
    teacher, tcfg = load_checkpoint(weights)
    if cfg.classes != 1 or tcfg.classes != 1:
        raise PolypsegError("Distillation (--distill) is for one class, polyp against background.")
    if (tcfg.mean, tcfg.std) != (cfg.mean, cfg.std):
        raise PolypsegError(
            f"--distill {cfg.distill} normalises its input otherwise (mean {tcfg.mean}, std {tcfg.std}; here "
            f"{cfg.mean}, {cfg.std}). Give --mean and --std of the teacher, or a teacher of the same encoder family."
        )
    return teacher.eval().requires_grad_(False), (tcfg.height, tcfg.width)


def distill_loss(logits: torch.Tensor, image: torch.Tensor, teacher: torch.nn.Module,
                 size: tuple[int, int]) -> torch.Tensor:
    """BCE of the student's logits against the teacher's probabilities: the teacher sees the batch resized to
    its own input ``size``, and its probabilities are resized back to the student's."""
    interpolate = torch.nn.functional.interpolate
    with torch.no_grad():
        x = image if tuple(image.shape[-2:]) == size else interpolate(image, size=size, mode="bilinear",
                                                                       align_corners=False)
        target = split_output(teacher(x))[0].float()
        if tuple(target.shape[-2:]) != tuple(logits.shape[-2:]):
            target = interpolate(target, size=logits.shape[-2:], mode="bilinear", align_corners=False)
    return torch.nn.functional.binary_cross_entropy_with_logits(logits.float(), torch.sigmoid(target))


def step_scale(scales: tuple[float, ...], seed: int, step: int) -> float:
    """The multi-scale factor of one training step: drawn from ``scales``, fixed by the run's seed and the
    step, so a resumed run and every DDP process draw the same."""
    return scales[int(np.random.default_rng((seed, step)).integers(len(scales)))]


def rescale_batch(batch: dict[str, Any], scale: float) -> dict[str, Any]:
    """The batch with images (bilinear) and masks (nearest: they stay 0/1) resized by ``scale``, each side
    rounded to a multiple of 32 (at least 32)."""
    h, w = batch["image"].shape[-2:]
    size = tuple(max(32, int(side * scale / 32 + 0.5) * 32) for side in (h, w))
    if size == (h, w):
        return batch
    interpolate = torch.nn.functional.interpolate
    return {**batch, "image": interpolate(batch["image"], size=size, mode="bilinear", align_corners=False),
            "mask": interpolate(batch["mask"], size=size, mode="nearest")}


def seed_worker(worker_id: int) -> None:
    """Give each data loader worker's augmentation its own seed, derived from the run's seed."""
    info = torch.utils.data.get_worker_info()
    transform = getattr(info.dataset, "transform", None)
    if transform is not None and hasattr(transform, "set_random_seed"):
        transform.set_random_seed(info.seed % 2**32)


def warmup_cosine(step: int, warmup: int, total: int) -> float:
    """LR factor: linear warm-up to 1, then cosine decay to 0 at ``total`` steps."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def make_optimizer(model: torch.nn.Module, cfg: Config) -> torch.optim.AdamW:
    """AdamW with the encoder (pretrained) and the rest (decoder, head) at their own learning rates."""
    enc = list(model.encoder.parameters())
    enc_ids = {id(p) for p in enc}
    rest = [p for p in model.parameters() if id(p) not in enc_ids]
    return torch.optim.AdamW(
        [{"params": enc, "lr": cfg.encoder_lr}, {"params": rest, "lr": cfg.lr}], weight_decay=cfg.weight_decay
    )


class SegModule(L.LightningModule):
    def __init__(self, cfg: Config, pretrained: bool = True):
        super().__init__()
        self.cfg = cfg
        self.model = build_model(cfg, load_weights=pretrained)
        if cfg.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.loss = make_loss(cfg)
        # a tuple, so the teacher is no sub-module: neither trained nor saved with the model
        self._teacher = load_teacher(cfg)
        self._val: list[torch.Tensor] = []
        self._val_scores: list[torch.Tensor] = []  # (label, head score, peak probability) per image

    def forward(self, x):
        if self.cfg.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.model(x)

    def on_fit_start(self):
        if self._teacher is not None:
            self._teacher[0].to(self.device)

    def _losses(self, batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(total loss, its terms: mask, and head and distill where used). The mask loss counts polyp frames
        fully and polyp-free ones with ``negatives_mask_weight``; the head learns every frame's label; the
        distillation term (``distill_weight``) the teacher's probabilities on every frame."""
        logits, head = split_output(self(batch["image"]))
        terms = {"mask": weighted_mask_loss(self.loss, logits, batch["mask"], batch["polyp"],
                                            self.cfg.negatives_mask_weight)}
        total = terms["mask"]
        if head is not None:
            terms["head"] = torch.nn.functional.binary_cross_entropy_with_logits(head[:, 0], batch["polyp"])
            total = total + terms["head"]
        if self._teacher is not None:
            terms["distill"] = distill_loss(logits, batch["image"], *self._teacher)
            total = total + self.cfg.distill_weight * terms["distill"]
        return total, terms

    def training_step(self, batch, _):
        if self.cfg.multi_scale:
            batch = rescale_batch(batch, step_scale(self.cfg.multi_scale, self.cfg.seed, self.global_step))
        loss, terms = self._losses(batch)
        n = len(batch["image"])
        self.log("train_loss", loss, on_step=False, on_epoch=True, prog_bar=True, sync_dist=True, batch_size=n)
        for name in ("head", "distill"):
            if name in terms:
                self.log(f"train_{name}_loss", terms[name], on_step=False, on_epoch=True, sync_dist=True, batch_size=n)
        return loss

    def validation_step(self, batch, _):
        logits, head = split_output(self(batch["image"]))
        loss = self.loss(logits, batch["mask"])
        peak = torch.sigmoid(logits[:, 0]).amax(dim=(1, 2)) if self.cfg.classes == 1 else logits.new_zeros(len(logits))
        head_score = torch.sigmoid(head[:, 0]) if head is not None else torch.full_like(peak, float("nan"))
        self._val_scores.append(torch.stack([batch["polyp"], head_score, peak], dim=1).detach().cpu())
        self.log("val_loss", loss, on_epoch=True, sync_dist=True, batch_size=len(batch["image"]))
        if self.cfg.classes == 1:
            tp, fp, fn, tn = smp.metrics.get_stats(
                logits.float(), batch["mask"].long(), mode="binary", threshold=self.cfg.decision_threshold
            )
        else:
            tp, fp, fn, tn = smp.metrics.get_stats(
                logits.argmax(1, keepdim=True), batch["mask"].long(), mode="multiclass",
                num_classes=self.cfg.classes,
            )
            tp, fp, fn, tn = (t[:, 1:].sum(1, keepdim=True) for t in (tp, fp, fn, tn))
        tp, fp, fn = (t[:, 0].float() for t in (tp, fp, fn))
        # Per-image Dice and IoU over polyp frames (polyp-free frames are scored at frame level, below);
        # an image with no polyp and none predicted counts as 1 (perfect).
        polyp = batch["polyp"] > 0.5 if self.cfg.classes == 1 else torch.ones_like(tp, dtype=torch.bool)
        dice = torch.where(tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn).clamp(min=1), torch.ones_like(tp))
        iou = torch.where(tp + fp + fn > 0, tp / (tp + fp + fn).clamp(min=1), torch.ones_like(tp))
        tp, fp, fn, dice, iou = (t[polyp] for t in (tp, fp, fn, dice, iou))
        n = torch.tensor(float(len(tp)), device=tp.device)
        self._val.append(torch.stack([tp.sum(), fp.sum(), fn.sum(), dice.sum(), iou.sum(), n]))

    def on_validation_epoch_end(self):
        if not self._val:
            return
        total = torch.stack(self._val).sum(0)
        self._val.clear()
        total = self.all_gather(total)
        if total.dim() == 2:  # one row per process under DDP
            total = total.sum(0)
        tp, fp, fn, dice_sum, iou_sum, n = total.tolist()
        self.log("val_dice", dice_sum / max(n, 1), prog_bar=True, rank_zero_only=True)
        self.log("val_iou", iou_sum / max(n, 1), rank_zero_only=True)
        self.log("val_dice_micro", 2 * tp / max(2 * tp + fp + fn, 1), rank_zero_only=True)
        # frame level (this process's validation frames): AUC of the head and of the peak probability
        scores = torch.cat(self._val_scores).numpy()
        self._val_scores.clear()
        for name, column in (("val_auc_head", 1), ("val_auc_peak", 2)):
            auc = roc_auc(scores[:, column], scores[:, 0]) if not np.isnan(scores[:, column]).any() else None
            if auc is not None:
                self.log(name, auc, rank_zero_only=True)

    def configure_optimizers(self):
        opt = make_optimizer(self.model, self.cfg)
        total = int(self.trainer.estimated_stepping_batches)
        per_epoch = max(1, total // max(1, self.cfg.epochs))
        warmup = min(total // 2, self.cfg.warmup_epochs * per_epoch)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_cosine(s, warmup, total))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def saved_weights(trainer, pl_module) -> torch.nn.Module:
    """The network a checkpoint holds: the moving average of the weights with ``ema`` (the one validation
    scored), else the trained weights."""
    for cb in trainer.callbacks:
        if isinstance(cb, EMAWeightAveraging) and cb._average_model is not None:  # Lightning keeps no public handle
            return cb._average_model.module.model
    return pl_module.model


class RunFolder(Callback):
    """Writes the run folder after every epoch: metrics.csv, curve.png, last/best checkpoints, resume.ckpt.

    Every file is replaced atomically, so killing the process at any moment (SIGKILL included) loses at
    most the epoch in flight.
    """

    def __init__(self, run: Path, cfg: Config, has_val: bool):
        self.run, self.cfg, self.has_val = run, cfg, has_val
        self.best, self.best_epoch = -1.0, 0
        self.rows: list[dict] = []
        self.epoch_start = time.time()

    def state_dict(self):
        return {"best": self.best, "best_epoch": self.best_epoch, "rows": self.rows}

    def load_state_dict(self, state):
        self.best, self.best_epoch, self.rows = state["best"], state["best_epoch"], list(state["rows"])

    def on_train_epoch_start(self, trainer, pl_module):
        self.epoch_start = time.time()

    def on_train_epoch_end(self, trainer, pl_module):
        m = {k: float(v) for k, v in trainer.callback_metrics.items()}
        epoch = trainer.current_epoch + 1
        row = {
            "epoch": epoch,
            "train_loss": m.get("train_loss", float("nan")),
            "val_loss": m.get("val_loss", float("nan")),
            "val_dice": m.get("val_dice", float("nan")),
            "val_iou": m.get("val_iou", float("nan")),
            "val_dice_micro": m.get("val_dice_micro", float("nan")),
            "val_auc_head": m.get("val_auc_head", float("nan")),
            "val_auc_peak": m.get("val_auc_peak", float("nan")),
            **({"train_distill_loss": m.get("train_distill_loss", float("nan"))} if self.cfg.distill else {}),
            "lr": trainer.optimizers[0].param_groups[1]["lr"],
            "seconds": round(time.time() - self.epoch_start, 1),
        }
        score = row["val_dice"] if self.has_val else -row["train_loss"]
        improved = score > self.best
        if improved:
            self.best, self.best_epoch = score, epoch
        self.rows.append(row)
        # Lightning's whole state (optimizer, scheduler, this callback's rows) for --resume is the commit
        # point of the epoch: once it is in place, the epoch counts as done. Every rank takes part in
        # save_checkpoint; rank 0 writes. The files after it are rewritten on resume if a kill stops them.
        tmp = self.run / ".resume.ckpt.tmp"
        trainer.save_checkpoint(tmp)
        if not trainer.is_global_zero:
            return
        os.replace(tmp, self.run / "resume.ckpt")
        self._write_outputs(saved_weights(trainer, pl_module), improved)
        val = f"val Dice {row['val_dice']:.4f}  IoU {row['val_iou']:.4f}" if self.has_val else "no validation side"
        if self.has_val and not math.isnan(row["val_auc_head"]):
            val += f"  frame AUC head {row['val_auc_head']:.3f} peak {row['val_auc_peak']:.3f}"
        line = (f"epoch {epoch:3d}/{self.cfg.epochs}  loss {row['train_loss']:.4f}  {val}"
                f"{'  (best)' if improved else ''}  {row['seconds']:.0f} s")
        bar = trainer.progress_bar_callback
        if bar is not None:
            bar.print(line)  # a line of its own above the progress bar
        else:
            print(line, flush=True)

    def on_train_start(self, trainer, pl_module):
        # Resumed: the restored weights are those of the last finished epoch; make sure the files that
        # follow resume.ckpt (which a kill may have cut short) show that epoch.
        if self.rows and trainer.is_global_zero:
            self._write_outputs(saved_weights(trainer, pl_module), self.best_epoch == self.rows[-1]["epoch"])

    def _write_outputs(self, model, is_best: bool) -> None:
        row = self.rows[-1]
        metrics = {k: v for k, v in row.items() if k != "epoch"}
        save_checkpoint(model, self.cfg, self.run / "last", epoch=row["epoch"], metrics=metrics)
        if is_best:
            save_checkpoint(model, self.cfg, self.run / "best", epoch=row["epoch"], metrics=metrics)
        self._write_metrics()

    def _write_metrics(self):
        path = self.run / "metrics.csv"
        fields = list(self.rows[0])

        def write(tmp):
            with open(tmp, "w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=fields)
                w.writeheader()
                w.writerows(self.rows)

        atomic_write(path, write)
        plot_curves(self.rows, self.run / "curve.png")


def plot_curves(rows: list[dict], path: Path) -> None:
    from matplotlib.figure import Figure  # no pyplot: no global backend state, renders with Agg

    epochs = [r["epoch"] for r in rows]
    fig = Figure(figsize=(10, 3.6))
    a, b = fig.subplots(1, 2)
    a.plot(epochs, [r["train_loss"] for r in rows], label="train")
    a.plot(epochs, [r["val_loss"] for r in rows], label="validation")
    a.set(xlabel="epoch", ylabel="loss", title="Loss")
    a.legend()
    b.plot(epochs, [r["val_dice"] for r in rows], label="per-image Dice")
    b.plot(epochs, [r["val_iou"] for r in rows], label="per-image IoU")
    b.set(xlabel="epoch", ylim=(0, 1), title="Validation (threshold 0.5)")
    b.legend()
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))


def negatives_sampler(pairs, fraction: float | None, seed: int):
    """A sampler that draws polyp-free frames (``Pair.polyp is False``) as ``fraction`` of each epoch (an
    epoch keeps its length), or None (every frame once per epoch) without a fraction or without both kinds."""
    if fraction is None:
        return None
    neg = np.array([p.polyp is False for p in pairs])
    if neg.all() or not neg.any():
        return None
    weights = np.where(neg, fraction / neg.sum(), (1 - fraction) / (~neg).sum())
    return torch.utils.data.WeightedRandomSampler(torch.as_tensor(weights, dtype=torch.double), len(pairs),
                                                  replacement=True, generator=torch.Generator().manual_seed(seed))


def _is_primary() -> bool:
    """False in the processes a DDP launcher (Lightning's, torchrun, SLURM) starts besides rank 0: they run
    `train` again from the top and must neither refuse the run folder rank 0 made nor write into it."""
    return all(os.environ.get(k, "0") == "0" for k in ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID"))


def _trainer_settings(cfg: Config) -> dict:
    gpu = cfg.accelerator in ("gpu", "cuda") or (cfg.accelerator == "auto" and torch.cuda.is_available())
    precision = cfg.precision if cfg.precision != "auto" else ("16-mixed" if gpu else "32-true")
    devices: int | str | list[int] = cfg.devices
    if isinstance(devices, str) and devices != "auto":
        devices = [int(d) for d in devices.split(",")] if "," in devices else int(devices)
    return dict(accelerator=cfg.accelerator, devices=devices, num_nodes=cfg.num_nodes, strategy=cfg.strategy,
                precision=precision)


def train(cfg: Config | None, out_dir: str | Path | None = None, resume: str | Path | None = None,
          progress: bool = True) -> Path:
    """Train ``cfg`` into a new run folder ``out_dir``, or continue the run folder ``resume``.

    Returns the run folder. The best checkpoint (by validation per-image Dice) is ``RUN/best``.
    """
    if resume is not None:
        run = Path(resume)
        if not (run / "config.json").is_file():
            raise PolypsegError(f"'{run}' is not a run folder (no config.json). Pass the folder `train -o` made.")
        cfg = Config.load(run / "config.json")
        for stale in run.glob(".*.tmp"):  # a write the kill interrupted; its target is intact
            stale.unlink()
        ckpt = run / "resume.ckpt"
        ckpt_path = str(ckpt) if ckpt.is_file() else None
        if ckpt_path is None:
            print(f"{run} has no finished epoch yet: starting it from the beginning.")
    else:
        if cfg is None or out_dir is None:
            raise PolypsegError("train() needs a Config and an output folder, or resume=RUN.")
        run = Path(out_dir)
        if _is_primary() and run.exists() and any(run.iterdir()):
            raise PolypsegError(
                f"Run folder '{run}' already exists and is not empty. Choose a new folder, or continue it "
                f"with `polypseg train --resume {run}`."
            )
        ckpt_path = None

    index = index_dataset(cfg.data, negatives=cfg.negatives)
    split = resolve_split(cfg, index)
    by_id = {p.id: p for p in index.pairs}
    # Read every frame the run will use before anything is written: bad data fails here, in one message,
    # not inside a data loader worker mid-epoch.
    # The test side too: `reproduce` evaluates it after hours of training.
    _, bad = usable_pairs([by_id[i] for i in split.train + split.val + split.test], skip_bad=cfg.skip_bad,
                          what="this run (train, validation and test sides)")
    left_out = {c.pair.id for c in bad}
    if left_out:
        split = dataclasses.replace(split, **{side: [i for i in getattr(split, side) if i not in left_out]
                                              for side in ("train", "val", "test")})
        if not split.train:
            raise PolypsegError("No usable training frame is left after leaving out the bad pairs.")
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    module = SegModule(cfg, pretrained=ckpt_path is None and cfg.init is None)  # resume restores every weight
    if ckpt_path is None and cfg.init is not None:
        weights = init_weights(module.model, cfg)  # every DDP process loads them; one says so
        if _is_primary():
            print(f"fine-tuning from {weights}")

    run.mkdir(parents=True, exist_ok=True)
    if _is_primary():
        if resume is None:
            cfg.save(run / "config.json")
            save_split(split, run / "split.json")
        print(split.summary())
        if bad:
            _write_left_out(run / "left_out.csv", bad)
            print(f"left out {len(bad)} unusable pair(s) (--skip-bad), listed in {run / 'left_out.csv'}:")
            for c in bad[:20]:
                print(f"  {c.pair.id}: {' '.join(c.problems)}")

    view = dict(crop=cfg.crop, corner=cfg.corner)
    train_pairs = [by_id[i] for i in split.train]
    if any(p.polyp is True and p.mask is None for p in train_pairs):
        raise PolypsegError("Polyp frames without masks cannot be trained on; keep them for evaluation.")
    if cfg.polyp_free_views:  # from training frames only: a view shares its frame's side
        views = polyp_free_views(train_pairs, cfg.width / cfg.height, cfg.seed, progress=progress and _is_primary())
        if _is_primary():
            print(f"{len(views)} polyp-free views cut out of {sum(p.polyp is not False for p in train_pairs)} "
                  "training polyp frames")
        train_pairs = train_pairs + views
    train_ds = SegmentationDataset(train_pairs, train_transform(cfg), **view)
    val_ds = SegmentationDataset([by_id[i] for i in split.val], eval_transform(cfg), **view) if split.val else None
    loader = dict(batch_size=cfg.batch_size, num_workers=cfg.num_workers, persistent_workers=cfg.num_workers > 0,
                  pin_memory=torch.cuda.is_available(), worker_init_fn=seed_worker)
    # drop_last: BatchNorm in DeepLabV3+'s ASPP pooling cannot take a batch of one in training
    sampler = negatives_sampler(train_pairs, cfg.negatives_fraction, cfg.seed)
    train_dl = DataLoader(train_ds, shuffle=sampler is None, sampler=sampler,
                          drop_last=len(train_ds) > cfg.batch_size, **loader)
    val_dl = DataLoader(val_ds, shuffle=False, **loader) if val_ds else None

    callbacks: list[Callback] = [RunFolder(run, cfg, has_val=val_ds is not None)]
    if cfg.patience > 0 and val_ds is not None:
        callbacks.append(EarlyStopping(monitor="val_dice", mode="max", patience=cfg.patience))
    if cfg.ema is not None:
        callbacks.append(EMAWeightAveraging(decay=cfg.ema))
    with _quiet_lightning():
        trainer = L.Trainer(
            **_trainer_settings(cfg),
            max_epochs=cfg.epochs,
            callbacks=callbacks,
            logger=[CSVLogger(run, name="logs", version=_csv_version(run, ckpt_path is not None)),
                    TensorBoardLogger(run, name="logs", version="tb")],
            enable_checkpointing=False,  # RunFolder writes checkpoints atomically
            enable_progress_bar=progress,
            enable_model_summary=False,
            limit_train_batches=cfg.limit_batches,
            limit_val_batches=cfg.limit_batches,
            num_sanity_val_steps=0,
            log_every_n_steps=1,
            deterministic=not torch.cuda.is_available(),
        )
        trainer.fit(module, train_dl, val_dl, ckpt_path=ckpt_path)
    if trainer.is_global_zero and val_ds is not None and cfg.classes == 1:
        finish_run(run, [by_id[i] for i in split.val])
    return run


def _csv_version(run: Path, resuming: bool) -> str:
    """Lightning's step log of this attempt: logs/metrics.csv, then logs/resume-N/ for the N-th resume.
    CSVLogger deletes the metrics.csv of its folder, so each resume gets its own and none is lost."""
    if not resuming:
        return ""
    return f"resume-{len(list((run / 'logs').glob('resume-*'))) + 1}"


def _write_left_out(path: Path, bad) -> None:
    def write(tmp):
        with open(tmp, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["id", "image", "mask", "problem"])
            w.writerows([c.pair.id, c.pair.image, c.pair.mask, " ".join(c.problems)] for c in bad)

    atomic_write(path, write)
