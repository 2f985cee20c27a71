"""The `polypseg` command: parses flags and calls the library. No logic of its own."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import textwrap
from typing import get_type_hints

from .config import DEFAULT_DATA, PRESETS, Config
from .errors import PolypsegError

# Help for the Config fields that `train` and `reproduce` expose as flags (--field-name).
CONFIG_HELP = {
    "arch": "smp architecture (deeplabv3plus, unet, unetplusplus, fpn, ...)",
    "encoder": "smp encoder, or any timm model as tu-<name>",
    "encoder_weights": "imagenet | none | path to a local .pth/.safetensors encoder state dict",
    "classes": "output classes (1: binary polyp/background)",
    "height": "model input height (multiple of 32)",
    "width": "model input width (multiple of 32)",
    "resize": "fit (aspect kept, padded) | stretch (resized to height x width): how frames of any shape enter the model",
    "mean": "input normalisation mean (3 values; default from the encoder weights)",
    "std": "input normalisation std (3 values; default from the encoder weights)",
    "init": "fine-tune: start from a trained model (run folder, checkpoint, or a shipped name such as realtime)",
    "distill": "distil a teacher into this model: a trained run, checkpoint or shipped name (e.g. accurate), "
               "run at its own input size; its probabilities are a second target beside the masks",
    "distill_weight": "weight of the distillation term against the mask loss (default 1)",
    "ema": "decay of an exponential moving average of the weights, used for validation and saved (e.g. 0.998; default off)",
    "threshold": "decision threshold; a given one is kept (default 0.5, or chosen with --choose-threshold)",
    "choose_threshold": "choose the decision threshold on the validation side after training (default: 0.5, "
                        "which held up better across seeds and CPUs, docs/training-log.md row 21)",
    "data": f"dataset folder (default {DEFAULT_DATA}); give it more than once to train on several data sets",
    "split": "split JSON from `polypseg data split`, or a CSV of id,side (default: made with --split-strategy)",
    "split_strategy": "random | sequence | kfold | pranet, when no --split is given",
    "fold": "fold of a kfold split file",
    "augment": "train augmentation preset: default | strong | hospitals (default + cap rims, borders and panels, "
               "highlights, bubbles, instruments, other towers' colour) | light | none",
    "multi_scale": "multi-scale training as PraNet: each step's batch resized by one of these factors, e.g. 0.75 1 1.25 "
                   "(sides rounded to multiples of 32; default off)",
    "epochs": "training epochs",
    "batch_size": "images per batch (per device)",
    "lr": "peak learning rate of decoder and head",
    "encoder_lr": "peak learning rate of the encoder",
    "weight_decay": "AdamW weight decay",
    "warmup_epochs": "linear warm-up epochs before cosine decay",
    "loss": "dice+bce | structure (PraNet's boundary-weighted BCE + IoU) | dice | bce | focal | lovasz | tversky",
    "patience": "early stopping after this many epochs without validation Dice gain (0: off)",
    "seed": "random seed (splits, augmentation, initialisation)",
    "accelerator": "auto | cpu | gpu",
    "devices": "auto | N | comma list, as Lightning takes it",
    "num_nodes": "nodes for multi-node DDP",
    "strategy": "Lightning strategy: auto | ddp | ddp_spawn | ...",
    "precision": "auto (16-mixed on GPU, 32 on CPU) | 32 | 16-mixed | bf16-mixed",
    "num_workers": "data loader worker processes",
    "channels_last": "channels_last memory format (faster convolutions)",
    "limit_batches": "batches per epoch (smoke tests)",
    "skip_bad": "leave out unreadable image/mask pairs (listed in RUN/left_out.csv) instead of stopping",
    "in_channels": "input channels",
    "val_size": "validation size when the split is made here: a count or a fraction (default: the strategy's)",
    "crop": "cut every frame to its endoscopic image (black borders, side panels) before the model",
    "corner": "black out this lower-left corner of the endoscopic image in every frame (height, width fractions)",
    "aux_head": "an image-level polyp/no-polyp head on the encoder, trained with the mask",
    "verdict": "polyp score per frame: logit (mean logit of the map's top 0.1%% of pixels) | head (image-level head) | "
               "peak (highest pixel probability) | area",
    "operating_point": "the verdict's operating point on the polyp score (default: chosen on validation for --verdict-sensitivity)",
    "verdict_sensitivity": "share of validation polyp frames the chosen operating point keeps flagged (default 0.95)",
    "negatives": "folder of polyp-free frames (images, no masks); repeatable; split like the data, sequences kept whole",
    "negatives_fraction": "share of polyp-free frames in each epoch (default: every one once per epoch)",
    "negatives_mask_weight": "weight of the mask loss on polyp-free frames (the head learns them at full weight)",
    "polyp_free_views": "also train on polyp-free views cut out of the training polyp frames (boxes with no polyp "
                        "pixel, several scales), as polyp-free frames of those hospitals",
}


def _add_config_flags(p: argparse.ArgumentParser) -> None:
    """Every Config field as --kebab-case flag, defaulting to None so presets show through."""
    hints = get_type_hints(Config)
    g = p.add_argument_group("recipe (override the preset)")
    g.add_argument("--preset", choices=sorted(PRESETS), help="named recipe; flags override its values")
    for f in dataclasses.fields(Config):
        flag = "--" + f.name.replace("_", "-")
        kind = hints[f.name]
        kw: dict = dict(default=None, help=CONFIG_HELP.get(f.name, ""))
        if f.name in ("data", "negatives"):
            g.add_argument(flag, action="append", metavar="DIR", **kw)
        elif f.name == "corner":
            g.add_argument(flag, type=float, nargs=2, metavar=("H", "W"), **kw)
        elif kind is bool:
            g.add_argument(flag, action=argparse.BooleanOptionalAction, **kw)
        elif f.name == "multi_scale":
            g.add_argument(flag, type=float, nargs="+", metavar="S", **kw)
        elif f.name in ("mean", "std"):
            g.add_argument(flag, type=float, nargs=3, metavar="X", **kw)
        elif kind in (int, int | None):
            g.add_argument(flag, type=int, **kw)
        elif kind in (float, float | None):
            g.add_argument(flag, type=float, **kw)
        else:
            g.add_argument(flag, type=str, **kw)


def _config_from_args(args: argparse.Namespace) -> Config:
    from .config import from_preset

    overrides = {f.name: getattr(args, f.name) for f in dataclasses.fields(Config)}
    return from_preset(args.preset, **overrides)


# --- handlers: each parses nothing and calls the library -------------------------------------

def _data_check(args) -> int:
    from .datacheck import check_dataset

    usable = True
    for i, folder in enumerate(args.dirs):
        report = check_dataset(folder, negatives=args.negatives)
        print(("\n" if i else "") + report.table())
        usable = usable and report.usable
    return 0 if usable else 1


def _data_split(args) -> int:
    from .data import index_dataset
    from .splits import make_split, save_split

    split = make_split(
        index_dataset(args.dirs), args.strategy, train=args.train, val=args.val, test=args.test,
        k=args.k, seed=args.seed,
    )
    save_split(split, args.output)
    print(split.summary())
    print(f"written: {args.output}")
    return 0


def _data_preview(args) -> int:
    from .data import index_dataset
    from .transforms import preview

    cfg = _config_from_args(args)
    pairs = list(index_dataset(args.dir, negatives=cfg.negatives).pairs)
    out = preview(pairs, cfg, args.output, n=args.n, seed=cfg.seed)
    print(f"written: {out}")
    return 0


def _weights_list(args) -> int:
    from .weights import format_weights_table

    print(format_weights_table())
    return 0


def _models(args) -> int:
    from .predict import format_models_table

    print(format_models_table())
    return 0


def _train(args) -> int:
    from .train import train

    if args.resume:
        given = [f.name for f in dataclasses.fields(Config) if getattr(args, f.name) is not None]
        if given or args.preset or args.output:
            raise PolypsegError(
                "--resume continues a run with its own config.json; drop the other flags "
                f"({', '.join(given + (['preset'] if args.preset else []) + (['output'] if args.output else []))})."
            )
        run = train(None, resume=args.resume, progress=sys.stderr.isatty())
    else:
        if not args.output:
            raise PolypsegError("Say where the run goes with -o RUN_DIR (or continue one with --resume RUN_DIR).")
        run = train(_config_from_args(args), out_dir=args.output, progress=sys.stderr.isatty())
    print(f"run folder: {run}")
    return 0


def _evaluate(args) -> int:
    from .evaluate import evaluate, evaluate_sets
    from .report import format_summary_table

    common = dict(out=args.output, tta=args.tta, threshold=args.threshold, bootstrap=args.bootstrap,
                  pranet_mdice=args.pranet_mdice, device=args.device, skip_bad=args.skip_bad, backend=args.backend,
                  onnx=args.onnx, precision=args.precision)
    if args.test_set or args.negatives:
        if args.data or args.split or args.all:
            raise PolypsegError("--test-set and --negatives name the test sets themselves; drop --data, --split and --all.")
        summary = evaluate_sets(args.run, args.test_set, negative_sets=args.negatives, **common)
    else:
        summary = evaluate(args.run, data=args.data, split=args.split, all_pairs=args.all, **common)
    print(format_summary_table(summary))
    return 0


def _calibrate(args) -> int:
    from .calibration import calibrate, calibrate_site

    if args.site or args.site_video:
        if not (args.site and args.site_video):
            raise PolypsegError("A site profile needs its name and its polyp-free video: --site NAME --site-video CLIP "
                                "(repeatable; a folder of polyp-free frames works too).")
        if args.sensitivity is not None or args.negatives or args.specificity is not None or args.output:
            raise PolypsegError("--site chooses a site's operating point and alert onset on its own video; leave out "
                                "--sensitivity, --negatives, --specificity and -o.")
        profile, path = calibrate_site(args.run, args.site, args.site_video,
                                       false_alerts_per_minute=args.target_false_alerts_per_minute,
                                       flagged_share=args.target_flagged_share, onset_ms=args.onset_ms, fps=args.fps,
                                       progress=not args.no_progress)
        print(profile.summary_text())
        print(f"written: {path}\nuse it with --site {profile.name} (video, serve, batch) or Predictor(..., site='{profile.name}')")
        return 0
    calibrate(args.run, sensitivity=args.sensitivity, choose_threshold=args.choose_threshold,
              negatives=args.negatives, specificity=args.specificity, out=args.output, verdict=args.verdict)
    return 0


def _compare(args) -> int:
    from .compare import compare, compare_frames, format_compare, format_compare_frames

    print(format_compare(compare(args.a, args.b, metric=args.metric, resamples=args.bootstrap), args.a, args.b))
    frames = format_compare_frames(compare_frames(args.a, args.b, resamples=args.bootstrap))
    if frames:
        print("\n" + frames)
    return 0


def _reproduce(args) -> int:
    from .reproduce import reproduce

    reproduce(_config_from_args(args), out_dir=args.output, tta=args.tta, device=args.device)
    return 0


def _predictor(args, tta: bool = False):
    """The Predictor that the inference flags (infer_flags) describe."""
    from .predict import Predictor

    return Predictor(args.run, device=args.device, tta=tta, backend=args.backend, onnx_path=args.onnx,
                     threads=args.threads, precision=args.precision, site=getattr(args, "site", None))


def _predict(args) -> int:
    from .files import check_writable
    from .predict import predict_paths

    check_writable(args.output, "the predictions (-o)", folder=True)  # before the model loads
    written = predict_paths(
        args.inputs, _predictor(args, tta=args.tta), args.output, save_prob=args.save_prob and args.prob_format,
        threshold=args.threshold,
    )
    print(f"{len(written)} image(s) written to {args.output}")
    return 0


def _alert_overrides(args) -> dict:
    """The alert rule's settings given on the command line (None: the site's, else the defaults)."""
    return dict(operating_point=args.operating_point, smoothing_ms=args.alert_smoothing_ms,
                onset_ms=args.alert_onset_ms, release_ms=args.alert_release_ms)


def _video(args) -> int:
    from .video import output_paths, run_video

    output_paths(args.output, args.csv)  # checked before the model loads
    predictor = _predictor(args)
    stats = run_video(
        args.source, predictor, args.output, csv_path=args.csv, max_frames=args.max_frames,
        show_progress=not args.no_progress, alerts=predictor.alert_rule(**_alert_overrides(args)),
        outlines="all" if args.show_all_outlines else "alert",
    )
    print(stats)
    return 0


def _batch(args) -> int:
    from .batch import run_batch

    result = run_batch(
        args.inputs, args.output, checkpoint=args.run, backend=args.backend, precision=args.precision,
        address=args.address,
        workers=args.workers, threads=args.threads, batch_size=args.batch_size, overlay=args.overlay,
        site=args.site, alert_overrides=_alert_overrides(args), outlines="all" if args.show_all_outlines else "alert",
        fps=args.fps, show_progress=not args.no_progress, num_cpus=args.num_cpus,
    )
    print(result)
    return 1 if result.errors else 0


def _serve(args) -> int:
    from .serve import ServeSettings, serve

    settings = ServeSettings(
        run=args.run, backend=args.backend, onnx=args.onnx, precision=args.precision, device=args.device, threads=args.threads,
        token=args.token, max_upload_mb=args.max_upload_mb, max_video_mb=args.max_video_mb, workers=args.workers,
        max_pending=args.max_pending, max_jobs=args.max_jobs, allowed_hosts=args.allowed_hosts, site=args.site,
    )
    serve(settings, host=args.host, port=args.port, insecure=args.insecure)
    return 0


def _export(args) -> int:
    from .export import export_onnx

    export_onnx(args.run, out_path=args.output, int8=args.int8, data=args.data)  # prints the check and paths
    return 0


def _benchmark(args) -> int:
    from .bench import benchmark

    benchmark(quick=args.quick, data=args.data, int8=args.int8, threads=args.threads, repeats=args.repeats)
    return 0


# --- parser ---------------------------------------------------------------------------------

def alert_flags(q: argparse.ArgumentParser) -> None:
    """The verdict's and the alert rule's flags (video, batch): a site profile, or settings one by one."""
    from .alerts import DEFAULT_ONSET_MS, DEFAULT_RELEASE_MS, DEFAULT_SMOOTHING_MS

    al = q.add_argument_group("alerts", "when the polyp score raises an alert (timed by the frames' timestamps); "
                              "an outline is drawn only while an alert is on")
    al.add_argument("--site", metavar="NAME", help="a site profile of the model (`polypseg calibrate --site NAME`): its "
                    "operating point and alert onset")
    al.add_argument("--operating-point", type=float, metavar="S", help="the verdict's operating point on the polyp "
                    "score, for frames and alerts (default: the site's, else the model's)")
    al.add_argument("--alert-smoothing-ms", type=float, metavar="MS",
                    help=f"time constant of the score's moving average, 0: none (default: the site's, else {DEFAULT_SMOOTHING_MS:g})")
    al.add_argument("--alert-onset-ms", type=float, metavar="MS",
                    help=f"the smoothed score stays at or above the operating point this long before an alert starts "
                         f"(default: the site's, else {DEFAULT_ONSET_MS:g})")
    al.add_argument("--alert-release-ms", type=float, metavar="MS",
                    help=f"and below it this long before it ends (default: the site's, else {DEFAULT_RELEASE_MS:g})")
    al.add_argument("--show-all-outlines", action="store_true", help="research: also draw the raw outlines the "
                    "verdict and the alert rule hide, in magenta (never the default)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="polypseg",
        description="Polyp segmentation in colonoscopy images and video: train, evaluate, run in real time.",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    data = sub.add_parser("data", help="inspect a dataset, make splits, preview augmentation")
    dsub = data.add_subparsers(dest="data_command", required=True, metavar="SUBCOMMAND")
    c = dsub.add_parser("check", help="read every pair and report what is there and what is wrong")
    c.add_argument("dirs", nargs="+", metavar="DIR",
                   help="dataset folder(s) (images/ + masks/, CVC-ClinicDB Original/ + Ground Truth/, ...)")
    c.add_argument("--negatives", action="store_true",
                   help="the folders hold polyp-free frames without masks (as given to train --negatives)")
    c.set_defaults(func=_data_check)
    s = dsub.add_parser("split", help="write a train/val/test split JSON")
    s.add_argument("dirs", nargs="+", metavar="DIR", help="dataset folder(s); each is split on its own")
    s.add_argument("--strategy", required=True, choices=["random", "sequence", "kfold", "pranet"])
    s.add_argument("--train", type=float, help="train size: a count (>= 1) or a fraction (< 1)")
    s.add_argument("--val", type=float, help="validation size: a count or a fraction")
    s.add_argument("--test", type=float, help="test size: a count or a fraction")
    s.add_argument("--k", type=int, default=5, help="folds for kfold")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("-o", "--output", required=True, help="split JSON to write")
    s.set_defaults(func=_data_split)
    v = dsub.add_parser("preview", help="PNG grid of augmented training samples with their masks")
    v.add_argument("dir", help="dataset folder")
    v.add_argument("--n", type=int, default=16, help="samples in the grid")
    v.add_argument("-o", "--output", required=True, help="PNG to write")
    _add_config_flags(v)
    v.set_defaults(func=_data_preview)

    w = sub.add_parser("weights", help="encoder weights available on this machine")
    wsub = w.add_subparsers(dest="weights_command", required=True, metavar="SUBCOMMAND")
    wsub.add_parser("list", help="which encoders have pretrained weights here").set_defaults(func=_weights_list)

    sub.add_parser("models", help="the shipped models (use them by name: --run realtime)").set_defaults(func=_models)

    t = sub.add_parser("train", help="train a model into a run folder")
    t.add_argument("-o", "--output", help="run folder to create")
    t.add_argument("--resume", metavar="RUN", help="continue an interrupted run from its last epoch")
    _add_config_flags(t)
    t.set_defaults(func=_train)

    def runtime_flags(q, backend: str = "torch", precision: str = "fp32", onnx_file: bool = True):
        q.add_argument("--backend", default=backend, choices=["torch", "onnxruntime"],
                       help=f"inference runtime (default {backend})")
        if onnx_file:
            q.add_argument("--onnx", metavar="FILE", help="ONNX file for --backend onnxruntime, e.g. "
                           "RUN/best.int8.onnx (default: RUN/best.onnx from `polypseg export`, else exported in memory)")
        q.add_argument("--precision", default=precision, choices=["fp32", "int8", "auto"],
                       help="onnxruntime: int8 runs the int8 file beside the checkpoint (`polypseg export --int8`; "
                       f"the realtime model ships one), auto runs it where there is one, on x86 only with VNNI (default {precision})")

    def eval_flags(q, run_required=True):
        q.add_argument("--tta", action="store_true", help="test-time augmentation (flips)")
        q.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
        if run_required:
            q.add_argument("--run", required=True, help="run folder, checkpoint (.safetensors) or a shipped model by name (realtime)")

    e = sub.add_parser("evaluate", help="metrics, per-image results and a report for a trained run")
    eval_flags(e)
    runtime_flags(e)
    e.add_argument("--negatives", action="append", metavar="DIR[:SIDE]",
                   help="a test set of polyp-free frames without masks (frame level: specificity, AUC); repeatable")
    e.add_argument("--test-set", action="append", metavar="DIR[:SIDE]",
                   help="a test set: every pair of DIR, or DIR:test for that folder's frames on the test side of "
                   "the run's split; give it once per set for one table of all (default for a run trained on "
                   "several folders: each folder's test side)")
    e.add_argument("--skip-bad", action="store_true", help="leave out unreadable pairs (listed) instead of stopping")
    e.add_argument("--data", help="dataset folder (default: the run's)")
    grp = e.add_mutually_exclusive_group()
    grp.add_argument("--split", help="split JSON whose test side is evaluated (default: the run's)")
    grp.add_argument("--all", action="store_true", help="evaluate every pair of --data")
    e.add_argument("--threshold", type=float, help="decision threshold (default: the run's, 0.5 unless chosen on validation)")
    e.add_argument("--pranet-mdice", action="store_true", help="also PraNet's Dice averaged over 256 thresholds")
    e.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for 95%% CIs (0: off)")
    e.add_argument("-o", "--output", help="evaluation folder (default: RUN/eval-<split>)")
    e.set_defaults(func=_evaluate)

    cb = sub.add_parser("calibrate", help="choose the verdict's operating point again: on the run's validation side "
                        "for a sensitivity, or on polyp-free frames the model never saw for a specificity")
    cb.add_argument("--run", required=True, help="run folder written by `polypseg train`; with --negatives also a "
                    "checkpoint or a shipped model by name (realtime)")
    cb.add_argument("--sensitivity", type=float, help="share of validation polyp frames to keep flagged (default: the run's, 0.95)")
    cb.add_argument("--choose-threshold", action=argparse.BooleanOptionalAction, default=None,
                    help="choose the decision threshold on validation too (default: the run's setting; off: 0.5)")
    cb.add_argument("--negatives", action="append", metavar="DIR",
                    help="polyp-free frames the model never trained on (repeatable): choose the point for --specificity on them")
    cb.add_argument("--specificity", type=float, help="with --negatives: share of those frames the point keeps quiet (e.g. 0.95)")
    cb.add_argument("--verdict", choices=["logit", "head", "peak", "area"], help="a run folder: choose the point for "
                    "this score source instead (logit: the mean logit of the map's top pixels)")
    cb.add_argument("-o", "--output", help="with --negatives: the calibrated checkpoint OUT.safetensors (weights copied "
                    "unchanged; required unless --run is a run folder, which is updated in place)")
    st = cb.add_argument_group("site", "a site's own operating point and alert onset, chosen on its polyp-free video")
    st.add_argument("--site", metavar="NAME", help="the site profile to make (saved beside the model as "
                    "WEIGHTS.site-NAME.json; chosen later with --site NAME)")
    st.add_argument("--site-video", action="append", metavar="CLIP", help="the site's polyp-free exam video, or a "
                    "folder of its polyp-free frames (repeatable)")
    st.add_argument("--target-false-alerts-per-minute", type=float, metavar="F", help="at most F false alerts a minute "
                    "on those frames")
    st.add_argument("--target-flagged-share", type=float, metavar="S", help="or: at most this share of those frames "
                    "flagged (e.g. 0.05)")
    st.add_argument("--onset-ms", type=float, metavar="MS", help="keep this alert onset (default: chosen among 0-500 "
                    "ms for a false-alert target, 200 ms for a flagged-share target)")
    st.add_argument("--fps", type=float, help="frame rate of folders of frames (default 25)")
    st.add_argument("--no-progress", action="store_true", help="no progress lines")
    cb.set_defaults(func=_calibrate)

    cp = sub.add_parser("compare", help="two evaluations of the same images: paired difference B - A with its CI")
    cp.add_argument("a", metavar="EVAL_A", help="evaluation folder of model A (`polypseg evaluate -o DIR`)")
    cp.add_argument("b", metavar="EVAL_B", help="evaluation folder of model B, on the same test sets")
    cp.add_argument("--metric", default="dice", help="per-image metric: dice, iou, precision, recall, hd95, ...")
    cp.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the 95%% CI")
    cp.set_defaults(func=_compare)

    r = sub.add_parser("reproduce", help="train a preset on a split, evaluate its test side, print the table")
    r.add_argument("-o", "--output", required=True, help="run folder to create")
    eval_flags(r, run_required=False)
    _add_config_flags(r)
    r.set_defaults(func=_reproduce)

    def infer_flags(q, backend: str = "torch", precision: str = "fp32"):
        q.add_argument("--run", help="run folder, checkpoint, or a shipped model by name (default: realtime, the shipped real-time model)")
        q.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N (onnxruntime: needs onnxruntime-gpu)")
        q.add_argument("--threads", type=int, help="CPU threads for inference (default: all cores)")
        runtime_flags(q, backend, precision)

    pr = sub.add_parser("predict", help="masks and overlays for images or folders of images")
    pr.add_argument("inputs", nargs="+", help="image files or folders")
    pr.add_argument("-o", "--output", required=True, help="output folder")
    infer_flags(pr)
    pr.add_argument("--save-prob", action="store_true", help="also write the probability map")
    pr.add_argument("--prob-format", choices=["png", "npy"], default="png",
                    help="probability map as 8-bit PNG (x 255) or float32 .npy (default png)")
    pr.add_argument("--tta", action="store_true", help="test-time augmentation (flips)")
    pr.add_argument("--threshold", type=float, help="decision threshold (default: the model's)")
    pr.set_defaults(func=_predict)

    vd = sub.add_parser("video", help="overlay video and per-frame CSV for a file, frame folder, camera or stream")
    vd.add_argument("source", help="video file, folder of frames, camera index (0) or stream URL")
    vd.add_argument("-o", "--output", required=True, help="overlay video to write (.mp4)")
    # real time on a CPU needs ONNX Runtime, and int8 matches fp32 on the shipped model (README: Speed)
    infer_flags(vd, backend="onnxruntime", precision="auto")
    vd.add_argument("--csv", help="per-frame CSV (default: beside the video)")
    vd.add_argument("--max-frames", type=int, help="stop after this many frames")
    vd.add_argument("--no-progress", action="store_true", help="no progress bar")
    alert_flags(vd)
    vd.set_defaults(func=_video)

    bt = sub.add_parser("batch", help="an archive of exams (videos, frame folders) on Ray Data: per-exam results and an archive summary")
    bt.add_argument("inputs", nargs="+", help="folders (searched recursively for videos and folders of frames), "
                    "video files, or a .txt list of them (one per line)")
    bt.add_argument("-o", "--output", required=True, help="output folder (a rerun skips the exams done there)")
    bt.add_argument("--run", help="run folder, checkpoint, or a shipped model by name (default: realtime, the shipped real-time model)")
    runtime_flags(bt, "onnxruntime", "auto", onnx_file=False)
    bt.add_argument("--address", help="join this Ray cluster (e.g. 10.0.0.5:6379, or auto); default: start Ray here")
    bt.add_argument("--workers", type=int, help="model workers (Ray actors; default: the cluster's CPUs / --threads)")
    bt.add_argument("--threads", type=int, help="inference threads per worker (default 1)")
    bt.add_argument("--num-cpus", type=int, help="CPUs of the Ray started here (default: every core)")
    bt.add_argument("--batch-size", type=int, default=16, help="frames per model call (default 16)")
    bt.add_argument("--overlay", action="store_true", help="also write each exam's overlay video (overlay.mp4)")
    bt.add_argument("--fps", type=float, help="frame rate of frame folders (default 25), or to override a video's")
    bt.add_argument("--no-progress", action="store_true", help="no progress bars")
    alert_flags(bt)
    bt.set_defaults(func=_batch)

    sv = sub.add_parser("serve", help="web app and HTTP API: images, video and the live camera in a browser")
    sv.add_argument("--run", help="run folder, checkpoint, or a shipped model by name (default: realtime, the shipped real-time model)")
    sv.add_argument("--host", default="127.0.0.1", help="address to bind (default loopback only)")
    sv.add_argument("--port", type=int, default=8000)
    runtime_flags(sv, "onnxruntime", "auto")
    sv.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N (onnxruntime: needs onnxruntime-gpu)")
    sv.add_argument("--threads", type=int, help="CPU threads per inference (default: all cores)")
    sv.add_argument("--token", help="bearer token required on every request (default: $POLYPSEG_TOKEN)")
    sv.add_argument("--insecure", action="store_true", help="allow a non-loopback --host without a token")
    sv.add_argument("--allowed-host", dest="allowed_hosts", action="append", default=[], metavar="NAME",
                    help="also answer requests (and browser WebSockets) naming this host, e.g. the server's name "
                         "on the network; repeatable; '*.example.org' for every name under it (default: "
                         "127.0.0.1, localhost, [::1] and --host; any other Host header gets 400)")
    sv.add_argument("--max-upload-mb", type=float, default=20.0, help="largest image upload (default 20)")
    sv.add_argument("--max-video-mb", type=float, default=500.0, help="largest video upload (default 500)")
    sv.add_argument("--workers", type=int, default=2, help="inference threads for images and live frames")
    sv.add_argument("--max-pending", type=int, default=64, help="frames in flight or waiting; beyond: 503")
    sv.add_argument("--max-jobs", type=int, default=4, help="video and site jobs waiting; beyond: 503")
    sv.add_argument("--site", metavar="NAME", help="start with this site profile of the model (its operating point "
                    "and alert rule, WEIGHTS.site-NAME.json; made by `polypseg calibrate --site` or the page's "
                    "Settings tab, which can also apply another while the server runs)")
    sv.set_defaults(func=_serve)

    x = sub.add_parser("export", help="export a run to ONNX (dynamic height and width)")
    x.add_argument("--run", help="run folder, checkpoint, or a shipped model by name (default: realtime, the shipped real-time model)")
    x.add_argument("-o", "--output", help="ONNX file (default: beside the checkpoint, RUN/best.onnx)")
    x.add_argument("--int8", action="store_true", help="also int8 static quantisation, calibrated on training frames")
    x.add_argument("--data", help="dataset folder for the check and calibration (default: the run's)")
    x.set_defaults(func=_export)

    b = sub.add_parser("benchmark", help="latency and fps: torch eager vs ONNX Runtime, and the video pipeline")
    b.add_argument("--quick", action="store_true", help="few iterations")
    b.add_argument("--data", default=DEFAULT_DATA, help="frames for the video pipeline clip")
    b.add_argument("--int8", action="store_true", help="also time int8 ONNX models (static quantisation)")
    b.add_argument("--threads", type=int, help="CPU threads for inference (default: compare 1, 2 and all cores)")
    b.add_argument("--repeats", type=int, help="runs of the video pipeline per setting (default 5, --quick 2)")
    b.set_defaults(func=_benchmark)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # polypseg's own notes (e.g. how many encoder tensors were loaded) go to stderr; other libraries keep theirs.
    log = logging.getLogger("polypseg")
    if not log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("polypseg: %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
    try:
        return args.func(args)
    except PolypsegError as err:
        print("polypseg: error: " + textwrap.fill(str(err), width=100, subsequent_indent="  "), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("polypseg: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
