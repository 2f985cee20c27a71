"""Training: loss, schedule, one short run into a loadable run folder, resume after SIGKILL, DDP on CPU."""

from __future__ import annotations

import csv
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from polypseg.config import Config, from_preset
from polypseg.errors import PolypsegError
from polypseg.model import load_checkpoint
from polypseg.splits import save_split
from polypseg.train import make_loss, train, warmup_cosine

POLYPSEG = [sys.executable, "-m", "polypseg.cli"]


def small_split(data_dir: Path, tmp_path: Path, train_ids, val_ids, test_ids=()) -> Path:
    from polypseg.data import index_dataset
    from polypseg.splits import make_split

    split = make_split(index_dataset(data_dir), "random", train=len(train_ids), test=len(test_ids) or 1, seed=0)
    split.train, split.val, split.test = list(train_ids), list(val_ids), list(test_ids)
    path = tmp_path / "split.json"
    save_split(split, path)
    return path


def rows(run: Path) -> list[dict]:
    with open(run / "metrics.csv") as f:
        return list(csv.DictReader(f))


def test_warmup_cosine_schedule():
    assert warmup_cosine(0, 4, 20) == pytest.approx(0.25)
    assert warmup_cosine(3, 4, 20) == pytest.approx(1.0)
    assert warmup_cosine(4, 4, 20) == pytest.approx(1.0)
    assert warmup_cosine(12, 4, 20) == pytest.approx(0.5)
    assert warmup_cosine(20, 4, 20) == pytest.approx(0.0)


def test_dice_bce_loss_is_lower_for_the_right_answer(tiny_config):
    loss = make_loss(tiny_config)
    target = torch.zeros(2, 1, 8, 8)
    target[:, :, 2:6, 2:6] = 1
    right = loss(target * 20 - 10, target)
    wrong = loss(10 - target * 20, target)
    assert right < 0.05 < 1.0 < wrong


def test_unknown_loss_lists_valid_ones(tiny_config):
    with pytest.raises(PolypsegError, match="dice\\+bce"):
        make_loss(tiny_config.replace(loss="hinge"))


def test_presets_and_overrides():
    cfg = from_preset("cpu-fast", epochs=3)
    assert cfg.encoder == "tu-tf_efficientnet_lite0" and cfg.epochs == 3
    assert cfg.mean == (0.5, 0.5, 0.5)  # the Lite weights' own normalisation
    seed = from_preset("seed")
    assert (seed.arch, seed.encoder, seed.height, seed.width) == ("deeplabv3plus", "resnet50", 288, 384)
    with pytest.raises(PolypsegError, match="cpu-fast"):
        from_preset("fastest")
    with pytest.raises(PolypsegError, match="multiple of 32"):
        Config(height=100)


def test_one_short_epoch_gives_a_loadable_run_folder(tmp_path, tiny_config, data_dir):
    split = small_split(data_dir, tmp_path, ["001", "002", "030", "031"], ["060", "061"], ["090"])
    cfg = tiny_config.replace(split=str(split), epochs=2)
    run = train(cfg, tmp_path / "run", progress=False)
    for name in ("config.json", "split.json", "metrics.csv", "curve.png", "best.safetensors", "best.json",
                 "last.safetensors", "last.json", "resume.ckpt"):
        assert (run / name).is_file(), name
    assert [r["epoch"] for r in rows(run)] == ["1", "2"]
    meta = json.loads((run / "best.json").read_text())
    dices = [float(r["val_dice"]) for r in rows(run)]
    best = dices.index(max(dices))  # the first epoch with the highest validation Dice
    assert meta["epoch"] == int(rows(run)[best]["epoch"])
    assert meta["metrics"]["val_dice"] == pytest.approx(dices[best])
    assert meta["config"]["encoder"] == "tu-test_efficientnet"
    assert meta["config"]["threshold"] is None and "threshold_from" not in meta["metrics"]  # 0.5 by default
    model, loaded = load_checkpoint(run)
    assert loaded.decision_threshold == 0.5
    with torch.no_grad():
        assert model(torch.zeros(1, 3, 64, 96)).shape == (1, 1, 64, 96)
    # the logs Lightning keeps: CSV and TensorBoard
    assert list((run / "logs").rglob("metrics.csv")) and list((run / "logs").rglob("events.out.tfevents*"))


def test_training_is_reproducible(tmp_path, tiny_config, data_dir):
    split = small_split(data_dir, tmp_path, ["001", "002", "030", "031"], ["060", "061"])
    cfg = tiny_config.replace(split=str(split), epochs=1)
    a = train(cfg, tmp_path / "a", progress=False)
    b = train(cfg, tmp_path / "b", progress=False)
    assert rows(a)[0]["train_loss"] == rows(b)[0]["train_loss"]
    assert (a / "best.safetensors").read_bytes() == (b / "best.safetensors").read_bytes()


def test_refuses_to_overwrite_a_run(tmp_path, tiny_config):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text("{}")
    with pytest.raises(PolypsegError, match="--resume"):
        train(tiny_config, run)


def _cli_train(args, **kw):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(POLYPSEG + ["train", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **kw)


def _tiny_flags(data_dir, split, run, epochs):
    return ["--encoder", "tu-test_efficientnet", "--encoder-weights", "none", "--height", "64", "--width", "96",
            "--batch-size", "2", "--num-workers", "0", "--data", str(data_dir), "--split", str(split),
            "--epochs", str(epochs), "--accelerator", "cpu", "-o", str(run)]


def test_resume_after_sigkill_continues_from_the_last_epoch(tmp_path, data_dir):
    split = small_split(data_dir, tmp_path, ["001", "002", "030", "031"], ["060", "061"])
    run = tmp_path / "run"
    proc = _cli_train(_tiny_flags(data_dir, split, run, epochs=12))
    # no time limit: a busy machine may take long for the first epoch; the loop ends when it is written
    while proc.poll() is None and not (run / "metrics.csv").is_file():
        time.sleep(0.05)
    assert (run / "metrics.csv").is_file(), proc.communicate()[0]
    proc.send_signal(signal.SIGKILL)  # at whatever moment the run is in
    proc.wait()
    done = len(rows(run))
    first_attempt_log = (run / "logs" / "metrics.csv").read_text()
    assert 1 <= done < 12
    result = subprocess.run(POLYPSEG + ["train", "--resume", str(run)], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    first = int(re.search(r"epoch +(\d+)/12", result.stdout).group(1))
    # it goes on after the last finished epoch: none is redone, at most the one in flight is lost
    assert done + 1 <= first <= done + 2
    assert [int(r["epoch"]) for r in rows(run)] == list(range(1, 13))
    # Lightning's step log of the first attempt is kept; the resumed attempt writes its own
    assert (run / "logs" / "metrics.csv").read_text() == first_attempt_log
    assert (run / "logs" / "resume-1" / "metrics.csv").is_file()
    load_checkpoint(run)
    assert not list(run.glob(".*.tmp*"))


@pytest.mark.slow
def test_ddp_two_cpu_processes_write_one_checkpoint(tmp_path, data_dir):
    split = small_split(data_dir, tmp_path, ["001", "002", "030", "031", "050", "051", "070", "071"], ["090", "091"])
    run = tmp_path / "run"
    proc = _cli_train(_tiny_flags(data_dir, split, run, epochs=1) + ["--devices", "2", "--strategy", "ddp"])
    out = proc.communicate(timeout=300)[0]
    assert proc.returncode == 0, out
    assert len(rows(run)) == 1
    assert sorted(p.name for p in run.glob("*.safetensors")) == ["best.safetensors", "last.safetensors"]
    assert out.count("epoch   1/1") == 1  # one process reports and writes
    load_checkpoint(run)


def test_multiclass_loss_takes_class_index_masks(tiny_config):
    loss = make_loss(tiny_config.replace(classes=3))
    target = torch.zeros(2, 1, 8, 8)
    target[:, :, 2:4] = 2
    right = torch.full((2, 3, 8, 8), -10.0)
    for c in range(3):
        right[:, c][target[:, 0] == c] = 10.0
    assert loss(right, target) < 0.05 < loss(-right, target)


def test_replace_encoder_recomputes_the_normalisation():
    cfg = from_preset("cpu-fast")
    assert cfg.mean == (0.5, 0.5, 0.5)
    other = cfg.replace(encoder="resnet50")  # torchvision's ImageNet statistics
    assert other.mean == pytest.approx((0.485, 0.456, 0.406)) and other.std == pytest.approx((0.229, 0.224, 0.225))
    assert cfg.replace(encoder="resnet50", mean=(0.1, 0.2, 0.3)).mean == (0.1, 0.2, 0.3)  # a named value wins
    assert cfg.replace(epochs=3).mean == (0.5, 0.5, 0.5)


def test_a_given_threshold_is_kept(tmp_path, tiny_config, data_dir):
    split = small_split(data_dir, tmp_path, ["001", "002", "030", "031"], ["060", "061"])
    run = train(tiny_config.replace(split=str(split), threshold=0.3, limit_batches=1), tmp_path / "run",
                progress=False)
    meta = json.loads((run / "best.json").read_text())
    assert meta["config"]["threshold"] == 0.3
    assert "threshold_from" not in meta["metrics"]


def test_threshold_chosen_on_request_and_undone_by_calibrate(tmp_path, tiny_config, data_dir):
    from polypseg.calibration import calibrate

    split = small_split(data_dir, tmp_path, ["001", "002", "030", "031"], ["060", "061"])
    run = train(tiny_config.replace(split=str(split), choose_threshold=True, limit_batches=1), tmp_path / "run",
                progress=False)
    for name in ("best", "last"):
        meta = json.loads((run / f"{name}.json").read_text())
        assert meta["metrics"]["threshold_from"] == "validation"
        assert 0 < meta["config"]["threshold"] < 1 and meta["config"]["choose_threshold"] is True
    calibrate(run, choose_threshold=False)
    meta = json.loads((run / "best.json").read_text())
    assert meta["config"]["threshold"] is None and meta["metrics"]["threshold_from"] == "default"
    assert load_checkpoint(run)[1].decision_threshold == 0.5
    assert Config.load(run / "config.json").choose_threshold is False  # the run remembers the setting


def _folder_with_a_truncated_image(data_dir: Path, root: Path) -> Path:
    import shutil

    for kind in ("images", "masks"):
        (root / kind).mkdir(parents=True)
        for frame in ("001", "002", "030", "031", "060"):
            shutil.copy(data_dir / kind / f"{frame}.png", root / kind / f"{frame}.png")
    bad = root / "images" / "030.png"
    bad.write_bytes(bad.read_bytes()[:3000])
    (root / "split.csv").write_text("id,side\n001,train\n002,train\n030,train\n031,train\n060,test\n")
    return root


def test_bad_data_is_refused_before_the_run_folder_is_made(tmp_path, tiny_config, data_dir):
    root = _folder_with_a_truncated_image(data_dir, tmp_path / "data")
    cfg = tiny_config.replace(data=str(root), split=str(root / "split.csv"), limit_batches=1)
    with pytest.raises(PolypsegError, match=r"1 of the 5 image/mask pairs for this run \(train, validation and test sides\) cannot be used\. 030: "
                                            r"Cannot read .*030\.png.*--skip-bad"):
        train(cfg, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()
    # the CLI: one message, exit 2, still no run folder
    flags = ["--encoder", "tu-test_efficientnet", "--encoder-weights", "none", "--height", "64", "--width", "96",
             "--data", str(root), "--split", str(root / "split.csv"), "--num-workers", "0", "-o", str(tmp_path / "r2")]
    done = subprocess.run(POLYPSEG + ["train", *flags], capture_output=True, text=True)
    assert done.returncode == 2 and "Traceback" not in done.stderr and "030" in done.stderr
    assert not (tmp_path / "r2").exists()

    run = train(cfg.replace(skip_bad=True), tmp_path / "run", progress=False)
    with open(run / "left_out.csv") as f:
        assert [r["id"] for r in csv.DictReader(f)] == ["030"]
    assert json.loads((run / "split.json").read_text())["train"] == ["001", "002", "031"]


def test_evaluate_checks_the_pairs_before_predicting(tmp_path, tiny_checkpoint, data_dir):
    from polypseg.evaluate import evaluate

    root = _folder_with_a_truncated_image(data_dir, tmp_path / "data")
    with pytest.raises(PolypsegError, match=r"1 of the 5 image/mask pairs for evaluation .*030"):
        evaluate(tiny_checkpoint, data=root, all_pairs=True, out=tmp_path / "ev", bootstrap=0, progress=False)
    assert not (tmp_path / "ev").exists()
    summary = evaluate(tiny_checkpoint, data=root, all_pairs=True, out=tmp_path / "ev", bootstrap=0,
                       progress=False, skip_bad=True)
    assert summary["n_images"] == 4 and [x["id"] for x in summary["selection"]["left_out"]] == ["030"]


def test_ema_saves_the_averaged_weights(tmp_path, tiny_config, data_dir):
    from safetensors.torch import load_file

    split = small_split(data_dir, tmp_path, ["001", "002", "030", "031"], ["060", "061"])
    cfg = tiny_config.replace(split=str(split), epochs=2, limit_batches=2)

    def weights(name, **changes):
        run = train(cfg.replace(**changes), tmp_path / name, progress=False)
        return load_file(run / "last.safetensors"), json.loads((run / "last.json").read_text())

    plain, _ = weights("plain")
    same, meta = weights("ema-none", ema=1e-12)  # the average is the last weights
    slow, _ = weights("ema-slow", ema=1 - 1e-9)  # the average stays at the weights of the first step
    assert meta["config"]["ema"] == 1e-12
    floats = [k for k in plain if plain[k].is_floating_point() and "running" not in k]
    def gap(a, b):
        return max((a[k].float() - b[k].float()).abs().max().item() for k in floats)

    # three optimiser steps after the first move weights by a few 1e-3; the near-zero decay follows them
    assert gap(plain, same) < 1e-5 and gap(plain, slow) > 1e-3
    with pytest.raises(PolypsegError, match="between 0 and 1"):
        Config(ema=1.0)


def test_init_fine_tunes_from_a_trained_model(tmp_path, tiny_config, data_dir):
    from safetensors.torch import load_file

    split = small_split(data_dir, tmp_path, ["001", "002", "030", "031"], ["060", "061"])
    cfg = tiny_config.replace(split=str(split), epochs=1, limit_batches=2)
    first = train(cfg, tmp_path / "first", progress=False)
    frozen = dict(lr=0.0, encoder_lr=0.0)  # no step moves a weight: the run keeps what it started from
    tuned = train(cfg.replace(init=str(first), **frozen), tmp_path / "tuned", progress=False)
    fresh = train(cfg.replace(**frozen), tmp_path / "fresh", progress=False)
    a, b, c = (load_file(r / "last.safetensors") for r in (first, tuned, fresh))
    learned = [k for k in a if a[k].is_floating_point() and "running" not in k and "num_batches" not in k]
    assert all(torch.equal(a[k], b[k]) for k in learned)
    assert not all(torch.equal(a[k], c[k]) for k in learned)  # without --init: the encoder's own start
    assert json.loads((tuned / "config.json").read_text())["init"] == str(first)

    # an image-level head the first model lacks starts fresh; the rest still comes from it
    headed = train(cfg.replace(init=str(first), aux_head=True, **frozen), tmp_path / "headed", progress=False)
    d = load_file(headed / "last.safetensors")
    assert any(k.startswith("classification_head.") for k in d) and all(torch.equal(a[k], d[k]) for k in learned)
    with pytest.raises(PolypsegError, match="another network"):
        train(cfg.replace(init=str(first), arch="unet"), tmp_path / "other", progress=False)
    assert not (tmp_path / "other").exists()  # refused before the run folder is made
    with pytest.raises(PolypsegError, match="neither a shipped model"):
        train(cfg.replace(init="nosuchmodel"), tmp_path / "missing", progress=False)


class _ConstantTeacher(torch.nn.Module):
    """A teacher whose logits are ``value`` everywhere; it records the input sizes it saw."""

    def __init__(self, value: float):
        super().__init__()
        self.value, self.seen = value, []

    def forward(self, x):
        self.seen.append(tuple(x.shape[-2:]))
        return torch.full((len(x), 1, *x.shape[-2:]), self.value)


def test_distill_loss_is_bce_against_the_teachers_probabilities_at_its_own_size():
    import math

    from polypseg.train import distill_loss

    teacher = _ConstantTeacher(2.0)
    logits = torch.ones(2, 1, 32, 48)
    loss = distill_loss(logits, torch.zeros(2, 3, 32, 48), teacher, (64, 96))
    p, q = 1 / (1 + math.exp(-2.0)), 1 / (1 + math.exp(-1.0))  # teacher's and student's probability
    assert float(loss) == pytest.approx(-(p * math.log(q) + (1 - p) * math.log(1 - q)), abs=1e-5)
    assert teacher.seen == [(64, 96)]  # the batch was resized to the teacher's input size


def test_distillation_trains_beside_the_masks_and_keeps_the_teacher_out(tmp_path, tiny_config, tiny_checkpoint, data_dir):
    from safetensors.torch import load_file

    split = small_split(data_dir, tmp_path, ["001", "002", "030", "031"], ["060", "061"])
    cfg = tiny_config.replace(split=str(split), epochs=1, limit_batches=2, width=128)
    teacher_before = load_file(tiny_checkpoint / "best.safetensors")
    plain = train(cfg, tmp_path / "plain", progress=False)
    student = train(cfg.replace(distill=str(tiny_checkpoint), distill_weight=0.5), tmp_path / "student", progress=False)
    distill = [float(r["train_distill_loss"]) for r in rows(student)]
    assert len(distill) == 1 and 0 < distill[0] < 5
    assert "train_distill_loss" not in rows(plain)[0]
    assert load_file(student / "best.safetensors").keys() == load_file(plain / "best.safetensors").keys()
    after = load_file(tiny_checkpoint / "best.safetensors")
    assert all(torch.equal(teacher_before[k], after[k]) for k in after)
    with pytest.raises(PolypsegError, match="normalises its input otherwise"):
        train(cfg.replace(distill=str(tiny_checkpoint), mean=(0.1, 0.1, 0.1)), tmp_path / "other", progress=False)
    assert not (tmp_path / "other").exists()
    with pytest.raises(PolypsegError, match="distill-weight"):
        cfg.replace(distill=str(tiny_checkpoint), distill_weight=0)


def test_rescale_batch_rounds_sides_to_32_and_keeps_masks_binary():
    from polypseg.train import rescale_batch

    mask = torch.zeros(2, 1, 64, 96)
    mask[:, :, :, :48] = 1  # the left half
    batch = {"image": torch.rand(2, 3, 64, 96), "mask": mask, "polyp": torch.ones(2), "id": ["a", "b"]}
    up = rescale_batch(batch, 1.25)  # 80 x 120 -> 96 x 128 (80 / 32 = 2.5 rounds up)
    assert up["image"].shape == (2, 3, 96, 128) and up["mask"].shape == (2, 1, 96, 128)
    assert set(up["mask"].unique().tolist()) == {0.0, 1.0} and float(up["mask"].mean()) == pytest.approx(0.5)
    assert up["polyp"] is batch["polyp"] and up["id"] == ["a", "b"]
    down = rescale_batch(batch, 0.75)  # 48 x 72 -> 64 x 64
    assert down["image"].shape[-2:] == (64, 64)
    assert rescale_batch(batch, 1.0) is batch
    assert rescale_batch(batch, 0.25)["image"].shape[-2:] == (32, 32)  # never below one stride


def test_multi_scale_draws_each_factor_reproducibly_and_trains(tmp_path, tiny_config, data_dir):
    from polypseg.train import step_scale

    scales = (0.75, 1.0, 1.25)
    drawn = [step_scale(scales, 0, step) for step in range(60)]
    assert drawn == [step_scale(scales, 0, step) for step in range(60)]  # resume and DDP draw the same
    assert set(drawn) == set(scales) and drawn != [step_scale(scales, 1, step) for step in range(60)]
    with pytest.raises(PolypsegError, match="multi-scale"):
        tiny_config.replace(multi_scale=(0.75, 0))
    from polypseg.cli import _config_from_args, build_parser

    args = build_parser().parse_args(["train", "--preset", "pranet", "--multi-scale", "0.75", "1", "1.25", "-o", "x"])
    assert _config_from_args(args).multi_scale == scales
    split = small_split(data_dir, tmp_path, ["001", "002", "030", "031"], ["060", "061"])
    run = train(tiny_config.replace(split=str(split), epochs=1, limit_batches=2, multi_scale=[0.75, 1.25]),
                tmp_path / "run", progress=False)
    assert Config.load(run / "config.json").multi_scale == (0.75, 1.25)
    assert math.isfinite(float(rows(run)[0]["train_loss"]))
