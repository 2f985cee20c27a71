"""Training throughput: `polypseg train` (Lightning) vs a plain PyTorch loop, same model, data and batch.

Both run polypseg's own pieces (SegModule's model and loss, the train augmentation, SegmentationDataset,
AdamW with the same parameter groups) on real CVC-ClinicDB frames; only the loop differs. Each times
steady-state steps (from the start of batch `warmup` to the start of the last batch), data loading
included, and prints images/s side by side with Lightning's overhead.

    python benchmarks/bench_train.py                  # DeepLabV3+ / EfficientNet-Lite0, 224x288, batch 8
    python benchmarks/bench_train.py --steps 10 --encoder tu-test_efficientnet --height 64 --width 96
"""

from __future__ import annotations

import argparse
import os
import time

import lightning as L
import torch
from torch.utils.data import DataLoader

from polypseg.config import DEFAULT_DATA, from_preset
from polypseg.data import SegmentationDataset, index_dataset
from polypseg.train import SegModule, make_optimizer, seed_worker
from polypseg.transforms import train_transform


class StepClock(L.Callback):
    def __init__(self):
        self.starts: list[float] = []

    def on_train_batch_start(self, *args):
        self.starts.append(time.perf_counter())


def loader(cfg, pairs):
    ds = SegmentationDataset(pairs, train_transform(cfg))
    return DataLoader(ds, batch_size=cfg.batch_size, shuffle=True, drop_last=True, num_workers=cfg.num_workers,
                      persistent_workers=cfg.num_workers > 0, worker_init_fn=seed_worker)


def images_per_second(starts: list[float], warmup: int, batch: int) -> float:
    timed = starts[warmup:]
    return (len(timed) - 1) * batch / (timed[-1] - timed[0])


def plain_loop(cfg, pairs, steps: int, warmup: int) -> float:
    torch.manual_seed(cfg.seed)
    module = SegModule(cfg, pretrained=False)
    model, loss_fn = module.model.train(), module.loss
    opt = make_optimizer(model, cfg)
    starts = []
    batches = iter(loader(cfg, pairs))
    for _ in range(steps + warmup):
        starts.append(time.perf_counter())
        batch = next(batches)
        x = batch["image"].contiguous(memory_format=torch.channels_last) if cfg.channels_last else batch["image"]
        loss = loss_fn(model(x), batch["mask"])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return images_per_second(starts, warmup, cfg.batch_size)


def lightning_loop(cfg, pairs, steps: int, warmup: int) -> float:
    torch.manual_seed(cfg.seed)
    module = SegModule(cfg, pretrained=False)
    clock = StepClock()
    trainer = L.Trainer(accelerator="cpu", devices=1, max_epochs=1, limit_train_batches=steps + warmup,
                        callbacks=[clock], logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0)
    trainer.fit(module, loader(cfg, pairs))
    return images_per_second(clock.starts, warmup, cfg.batch_size)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=DEFAULT_DATA)
    p.add_argument("--encoder", default="tu-tf_efficientnet_lite0")
    p.add_argument("--height", type=int, default=224)
    p.add_argument("--width", type=int, default=288)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--steps", type=int, default=20, help="timed steps per loop")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeats", type=int, default=2, help="alternate the two loops this many times")
    a = p.parse_args()
    cfg = from_preset("cpu-fast", encoder=a.encoder, encoder_weights="none", height=a.height, width=a.width,
                      batch_size=a.batch_size, data=a.data)
    pairs = index_dataset(a.data).pairs[: (a.steps + a.warmup + 1) * a.batch_size]
    results = {"plain PyTorch loop": [], "polypseg train (Lightning)": []}
    for _ in range(a.repeats):  # alternate, so that a noisy neighbour hurts both alike
        results["plain PyTorch loop"].append(plain_loop(cfg, pairs, a.steps, a.warmup))
        results["polypseg train (Lightning)"].append(lightning_loop(cfg, pairs, a.steps, a.warmup))
    print(f"DeepLabV3+ / {cfg.encoder} at {cfg.height}x{cfg.width}, batch {cfg.batch_size}, "
          f"{cfg.num_workers} loader workers, {os.cpu_count()} CPU cores, torch {torch.__version__}, "
          f"{a.steps} timed steps after {a.warmup}, best of {a.repeats}")
    base = max(results["plain PyTorch loop"])
    print("| loop | images/s (best) | all runs | overhead vs plain |")
    print("|---|---|---|---|")
    for name, runs in results.items():
        best = max(runs)
        print(f"| {name} | {best:.2f} | {', '.join(f'{r:.2f}' for r in runs)} | {100 * (base / best - 1):+.1f}% |")


if __name__ == "__main__":
    main()
