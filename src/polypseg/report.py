"""What an evaluation shows: its figures (Dice histogram, threshold curve, per-sequence bars, ROC curve,
galleries of the worst and best frames and of the worst false alarms) and its text (the terminal table,
``report.md`` and a self-contained ``report.html``, rendered from one list of blocks).

``evaluate`` computes the numbers and calls this module; nothing here chooses a threshold or a metric.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from . import metrics
from .data import load_pair
from .media import read_image
from .progress import text_table
from .viz import GREEN, YELLOW, overlay


def runtime_text(summary: dict[str, Any]) -> str:
    """'TTA off' and, unless it is torch, the runtime and the ONNX file the frames ran through."""
    text = f"TTA {'on (flips)' if summary['tta'] else 'off'}"
    backend = summary.get("backend", "torch")
    if backend != "torch":
        int8 = " int8" if summary.get("precision") == "int8" else ""
        text += f", {backend}{int8}" + (f" ({summary['onnx']})" if summary.get("onnx") else "")
    return text


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _auc_text(frame: dict[str, Any]) -> str:
    if frame["auc"] is None:
        return "-"
    ci = frame.get("auc_ci")
    return f"{frame['auc']:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")


def _frame_blocks(summary) -> list[tuple]:
    f = summary["frame"]
    c = f["counts"]
    text = (f"Does the frame show a polyp? {f['n_polyp']} polyp frames, {f['n_polyp_free']} polyp-free frames. "
            f"Verdict '{f['verdict']}' (polyp score) at the operating point {f['operating_point']:.4f} "
            f"({f['operating_point_source']}; never chosen on these frames): sensitivity {_pct(f['sensitivity'])} "
            f"({c['tp']} of {c['tp'] + c['fn']} polyp frames flagged), specificity {_pct(f['specificity'])} "
            f"({c['tn']} of {c['tn'] + c['fp']} polyp-free frames left quiet).")
    if f["auc"] is not None:
        others = ", ".join(f"{k} {v:.3f}" for k, v in f.get("auc_by_source", {}).items() if v is not None)
        text += (f" ROC AUC {_auc_text(f)} (95% bootstrap interval, each kind of frame resampled on its own; "
                 f"AUC of every score source on these frames: {others}). "
                 f"Read off this set's own ROC, flagging {100 * f['target_sensitivity']:.0f}% of its polyp frames "
                 f"would flag {_pct(f['fa_at_target'])} of its polyp-free frames (a reading, not an operating point).")
    if f["polyp_free_drawn"] is not None:
        text += (f" Polyp-free frames with any polyp pixel shown: {_pct(f['polyp_free_drawn'])}; with the shown polyp "
                 f"covering at least {100 * metrics.VISIBLE_AREA:.0f}% of the frame: {_pct(f['polyp_free_drawn_visible'])}.")
    b: list[tuple] = [("h", 2, "Frame level"), ("p", text)]
    if f["roc"] is not None:
        b.append(("img", "roc.png", "ROC curve, polyp vs polyp-free frames"))
    if summary.get("false_alarm_gallery"):
        b += [("p", "The polyp-free frames the model scores highest (worst first): the frame, and what the mask "
                    "would draw at the threshold (yellow) whether or not the verdict shows it."),
              ("img", "false_alarms.jpg", "worst false alarms")]
    return b


def write_frame_figures(tmp, rows, summary, threshold, predictor, pairs, gallery) -> list[str]:
    """roc.png (both kinds of frame present) and false_alarms.jpg: the polyp-free frames the model scores
    highest, worst first. Returns the ids the gallery shows."""
    frame = summary["frame"]
    if frame["roc"] is not None:
        fig = _figure(4.5, 4.2)
        ax = fig.add_subplot()
        roc = frame["roc"]
        ax.plot(roc["fpr"], roc["tpr"], label=f"AUC {frame['auc']:.3f}")
        ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
        if frame["sensitivity"] is not None and frame["false_alarm_rate"] is not None:
            ax.plot([frame["false_alarm_rate"]], [frame["sensitivity"]], "o", color="black",
                    label=f"operating point {frame['operating_point']:.3f}")
        ax.set(xlabel="polyp-free frames flagged (1 - specificity)", ylabel="polyp frames flagged (sensitivity)",
               xlim=(0, 1), ylim=(0, 1.01), title=f"{frame['n_polyp']} polyp, {frame['n_polyp_free']} polyp-free frames")
        ax.legend(loc="lower right")
        _save(fig, tmp / "roc.png")
    free = [i for i, r in enumerate(rows) if r["polyp"] == 0]
    if gallery <= 0 or not free:
        return []
    worst = sorted(free, key=lambda i: (-rows[i]["polyp_score"], rows[i]["id"]))[:gallery]
    lines = []
    for i in worst:
        image = read_image(pairs[i].image)
        prediction = predictor.predict(image)
        drawn = prediction.prob >= threshold
        caption = (f"{rows[i]['id']}   score {rows[i]['polyp_score']:.3f}   "
                   f"{'FLAGGED' if rows[i]['polyp_present'] else 'quiet'}   frame | what the mask would draw")
        lines.append(_gallery_line(image, [image, overlay(image, drawn, YELLOW)], caption))
    _write_jpeg(tmp / "false_alarms.jpg", lines)
    return [rows[i]["id"] for i in worst]


# ---------------------------------------------------------------------------------------------------
# Figures


def _figure(width: float, height: float):
    from matplotlib.figure import Figure  # the Agg canvas, no pyplot state

    return Figure(figsize=(width, height), dpi=100, layout="tight")


def _save(fig, path: Path) -> None:
    fig.savefig(path, format="png")


def write_figures(tmp, rows, summary, threshold, predictor, pairs, gallery) -> list[str]:
    """dice_hist.png, threshold_curve.png, gallery.jpg and (sequences known) per_sequence.png.

    Returns the ids the gallery shows, worst first.
    """
    dice = np.array([r["dice"] for r in rows])
    fig = _figure(6, 3.5)
    ax = fig.add_subplot()
    ax.hist(dice, bins=np.linspace(0, 1, 21), color="tab:blue", edgecolor="white")
    ax.axvline(dice.mean(), color="black", linestyle="--", label=f"mean {dice.mean():.3f}")
    ax.set(xlabel="Dice per image", ylabel="images", xlim=(0, 1), title=f"Per-image Dice ({len(dice)} images)")
    ax.legend()
    _save(fig, tmp / "dice_hist.png")

    curve = summary["threshold_curve"]
    fig = _figure(6.5, 3.5)
    ax = fig.add_subplot()
    ax.plot(curve["thresholds"], curve["dice_per_image"], label="per-image mean Dice")
    ax.plot(curve["thresholds"], curve["dice_micro"], label="micro Dice")
    ax.axvline(threshold, color="black", linestyle="--", label=f"threshold used {threshold:.2f}")
    ax.set(xlabel="threshold", ylabel="Dice", xlim=(0, 1), ylim=(0, 1),
           title="Dice vs threshold on these images (not used to choose it)")
    ax.legend()
    _save(fig, tmp / "threshold_curve.png")

    if summary["per_sequence"]:
        seqs = summary["per_sequence"]
        fig = _figure(max(4, 0.3 * len(seqs) + 1.5), 3.5)
        ax = fig.add_subplot()
        ax.bar(list(seqs), [v["dice"] for v in seqs.values()], color="tab:green")
        ax.set(xlabel="sequence", ylabel="mean Dice", ylim=(0, 1), title="Per-sequence mean Dice")
        ax.tick_params(axis="x", labelsize=7)
        _save(fig, tmp / "per_sequence.png")

    if gallery <= 0:
        return []
    chosen = _gallery_rows(rows, gallery)
    _write_gallery(tmp / "gallery.jpg", chosen, rows, predictor, pairs, threshold)
    return [rows[i]["id"] for i in chosen]


def _gallery_rows(rows: list[dict[str, Any]], k: int) -> list[int]:
    """Indices of the k/2 worst and k/2 best frames by Dice (all frames if there are at most k)."""
    order = sorted(range(len(rows)), key=lambda i: (rows[i]["dice"], rows[i]["id"]))
    if len(order) <= k:
        return order
    return order[: k // 2] + order[len(order) - (k - k // 2):]


def _gallery_line(image: np.ndarray, panels: list[np.ndarray], caption: str, height: int = 192) -> np.ndarray:
    """One gallery row: ``panels`` side by side at ``height`` pixels, ``caption`` above them."""
    width = round(image.shape[1] * height / image.shape[0])
    resized = [cv2.resize(p, (width, height), interpolation=cv2.INTER_AREA) for p in panels]
    gap = np.full((height, 4, 3), 255, np.uint8)
    line = resized[0]
    for p in resized[1:]:
        line = np.hstack([line, gap, p])
    top = np.full((22, line.shape[1], 3), 255, np.uint8)
    cv2.putText(top, caption, (4, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    return np.vstack([top, line, np.full((6, line.shape[1], 3), 255, np.uint8)])


def _write_jpeg(path: Path, lines: list[np.ndarray]) -> None:
    width = max(line.shape[1] for line in lines)
    picture = np.vstack([np.pad(line, ((0, 0), (0, width - line.shape[1]), (0, 0)), constant_values=255)
                         for line in lines])
    _, jpeg = cv2.imencode(".jpg", picture[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 90])
    path.write_bytes(jpeg.tobytes())


def _write_gallery(path, chosen, rows, predictor, pairs, threshold) -> None:
    """One JPEG, a row per frame: the frame | ground truth (green) | prediction (yellow), captioned."""
    lines = []
    for i in chosen:
        image, mask = load_pair(pairs[i])
        pred = predictor.predict_prob(image) >= threshold
        text = f"{rows[i]['id']}   Dice {rows[i]['dice']:.3f}   frame | ground truth | prediction"
        if len(chosen) < len(rows):
            text = ("worst   " if chosen.index(i) < len(chosen) // 2 else "best   ") + text
        lines.append(_gallery_line(image, [image, overlay(image, mask, GREEN), overlay(image, pred, YELLOW)], text))
    _write_jpeg(path, lines)


# ---------------------------------------------------------------------------------------------------
# Text: terminal table, report.md and report.html from one list of blocks


def _ci_text(summary, reduction: str, name: str) -> str:
    if summary.get("metrics") is None:
        return "-"
    value = summary["metrics"][reduction][name]
    if not summary.get("ci"):
        return f"{value:.3f}"
    lo, hi = summary["ci"][reduction][name]
    return f"{value:.3f} [{lo:.3f}, {hi:.3f}]"


def _what_text(summary) -> str:
    sel = summary["selection"]
    if sel["side"] == "all":
        return f"every pair of {summary['data']}"
    s = sel["split"]
    fold = f", fold {s['fold']}" if s["fold"] is not None else ""
    return f"the test side of {s['path']} ({s['strategy']} split, seed {s['seed']}{fold})"


def _headline(summary) -> str:
    return (
        f"Headline: mDice {_ci_text(summary, 'per-image', 'dice')}, mIoU {_ci_text(summary, 'per-image', 'iou')} "
        "(per-image means of the polyp class, as PraNet and later papers report). Two-class mIoU (polyp and "
        f"background IoU averaged, another common reading of 'mIoU'): {_ci_text(summary, 'micro', 'miou2')} "
        f"micro, {_ci_text(summary, 'per-image', 'miou2')} per-image. Background IoU and pixel accuracy are "
        "high even for a model that predicts no polyp at all; judge a model by Dice and polyp IoU."
    )


def _leak_line(summary) -> str:
    """The split's leak sentence, plus how many evaluated frames the run itself trained on."""
    sel = summary["selection"]
    seen = sel.get("seen_in_training")
    if seen is None:
        return sel["leak_text"]
    if seen:
        return f"{sel['leak_text']} {seen} of the evaluated frames were used in training or validation."
    return f"{sel['leak_text']} None of the evaluated frames was used in training or validation."


def _blocks(summary) -> list[tuple]:
    """The report as ("h"|"p"|"table"|"img", ...) blocks, rendered to Markdown and HTML alike."""
    n = summary["n_images"]
    head: list[tuple] = [
        ("h", 1, "polypseg evaluation"),
        ("p", f"Run `{summary['run']}`, {n} images: {_what_text(summary)}. Threshold "
              f"{summary['threshold']:.2f} ({summary['threshold_source']}); never chosen on these images. "
              f"{runtime_text(summary)}. Model {summary['model']['arch']} / "
              f"{summary['model']['encoder']} at {summary['model']['height']}x{summary['model']['width']}; "
              "metrics at each image's own size."),
        ("p", _leak_line(summary)),
    ]
    if summary.get("metrics") is None:
        return head + [("p", "No polyp frame with a mask here: segmentation measures are not computed.")] + _frame_blocks(summary)
    return head + _segmentation_blocks(summary) + _frame_blocks(summary)


def _segmentation_blocks(summary) -> list[tuple]:
    ci = summary.get("ci")
    b: list[tuple] = [
        ("h", 2, "Metrics"),
        ("p", _headline(summary)),
        ("p", "Per-image: the metric on each image, then the mean over images (the polyp literature's "
              "mDice and mIoU). Micro: confusion counts summed over all images, then the metric. "
              + (f"95% percentile bootstrap intervals over images ({summary['bootstrap']['resamples']} "
                 f"resamples, seed {summary['bootstrap']['seed']})." if ci else "No bootstrap intervals.")),
        ("table", ["metric", "per-image mean", "micro", "definition"],
         [[label, _ci_text(summary, "per-image", k), _ci_text(summary, "micro", k), definition]
          for k, (label, definition) in metrics.METRICS.items()]),
        ("p", f"HD95 (95th-percentile symmetric Hausdorff distance of the mask outlines, pixels): mean "
              f"{summary['hd95']['mean']:.1f}"
              + (f" [{ci['per-image']['hd95'][0]:.1f}, {ci['per-image']['hd95'][1]:.1f}]" if ci else "")
              + f", median {summary['hd95']['median']:.1f}; {summary['hd95']['n_one_empty']} image(s) with "
              f"exactly one empty mask. {summary['hd95']['rule']}"),
    ]
    if summary.get("sod"):
        b += [
            ("p", "The polyp papers' toolbox measures (pysodmetrics, as PraNet's MATLAB code: each probability "
                  "map min-max normalised, averaged over images):"),
            ("table", ["measure", "value", "definition"],
             [[label, f"{summary['sod'][k]:.3f}", definition] for k, (label, definition) in metrics.SOD_MEASURES.items()]),
        ]
    if summary["pranet_mdice"] is not None:
        b.append(("p", f"PraNet-style mDice (per-image Dice averaged over 256 thresholds of the min-max "
                       f"normalised map): {summary['pranet_mdice']:.3f}."))
    b += [
        ("p", f"Segmentation measures run over the {summary['n_seg_images']} polyp frames with masks (the "
              f"literature's mDice); polyp-free frames count at frame level (below). {summary['n_pred_empty']} "
              f"polyp frame(s) with nothing predicted. {summary['empty_rule']} mDice of the mask as shown (empty "
              f"where the verdict says no polyp): {summary['mdice_shown']:.3f}."),
        ("p", f"Time: {summary['timing']['seconds']:.1f} s, {summary['timing']['images_per_second']:.2f} "
              f"images/s on {summary['device']}."),
        ("h", 2, "Per-image Dice"),
        ("img", "dice_hist.png", "histogram of per-image Dice"),
        ("h", 2, "Threshold"),
        ("p", "Dice of these images at other thresholds, for reading only: the threshold used was fixed "
              "before this evaluation, and choosing it here would flatter the scores."),
        ("img", "threshold_curve.png", "Dice vs threshold"),
    ]
    if summary["per_sequence"]:
        seqs = summary["per_sequence"]
        b += [
            ("h", 2, "Per sequence"),
            ("img", "per_sequence.png", "mean Dice per sequence"),
            ("table", ["sequence", "images", "mean Dice"], [[s, v["n"], f"{v['dice']:.3f}"] for s, v in seqs.items()]),
        ]
    if summary.get("gallery"):
        b += [
            ("h", 2, "Worst and best frames"),
            ("p", "Each row: the frame, the ground truth (green), the prediction (yellow)."),
            ("img", "gallery.jpg", "worst and best frames"),
        ]
    return b


def _markdown(blocks) -> str:
    lines = []
    for kind, *a in blocks:
        if kind == "h":
            lines.append("#" * a[0] + " " + a[1])
        elif kind == "p":
            lines.append(a[0])
        elif kind == "table":
            header, rows = a
            lines.append("| " + " | ".join(header) + " |")
            lines.append("|" + "---|" * len(header))
            lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
        elif kind == "img":
            lines.append(f"![{a[1]}]({a[0]})")
        lines.append("")
    return "\n".join(lines)


def _html(blocks, folder: Path) -> str:
    body = []
    for kind, *a in blocks:
        if kind == "h":
            body.append(f"<h{a[0]}>{html.escape(a[1])}</h{a[0]}>")
        elif kind == "p":
            body.append(f"<p>{html.escape(a[0]).replace('`', '')}</p>")
        elif kind == "table":
            header, rows = a
            head = "".join(f"<th>{html.escape(str(c))}</th>" for c in header)
            cells = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
            body.append(f"<table><tr>{head}</tr>{cells}</table>")
        elif kind == "img":
            data = base64.b64encode((folder / a[0]).read_bytes()).decode("ascii")
            mime = "image/jpeg" if a[0].endswith(".jpg") else "image/png"
            body.append(f'<p><img alt="{html.escape(a[1])}" src="data:{mime};base64,{data}"></p>')
    style = (
        "body{font-family:sans-serif;max-width:60em;margin:2em auto;padding:0 1em;line-height:1.4}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.2em .5em;text-align:left}"
        "img{max-width:100%}"
    )
    return (
        '<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>polypseg evaluation</title>'
        f"<style>{style}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n"
    )


def _sets_table(sets: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """One row per test set: the literature's columns (per-image mDice and mIoU with CIs, the toolbox's
    measures), then how many of its frames the run trained on."""
    header = (["test set", "images", "mDice", "mIoU"] + [label for label, _ in metrics.SOD_MEASURES.values()]
              + ["polyp / free frames", "sensitivity", "specificity", "frame AUC", "flagged free @95% sens.",
                 "trained on"])
    rows = []
    for t in sets:
        seen = t["selection"].get("seen_in_training")
        f = t["frame"]
        rows.append([t["selection"]["name"], str(t["n_images"]), _ci_text(t, "per-image", "dice"),
                     _ci_text(t, "per-image", "iou")]
                    + [f"{t['sod'][k]:.3f}" if t.get("sod") else "-" for k in metrics.SOD_MEASURES]
                    + [f"{f['n_polyp']} / {f['n_polyp_free']}", _pct(f["sensitivity"]), _pct(f["specificity"]),
                       _auc_text(f), _pct(f["fa_at_target"])]
                    + ["?" if seen is None else f"{seen} frames"])
    return header, rows


def _combined_blocks(combined: dict[str, Any]) -> list[tuple]:
    sets = combined["test_sets"]
    first = sets[0]
    header, rows = _sets_table(sets)
    b: list[tuple] = [
        ("h", 1, "polypseg evaluation on several test sets"),
        ("p", f"Run `{combined['run']}`. Threshold {first['threshold']:.2f} ({first['threshold_source']}); "
              f"{runtime_text(first)}. Model {first['model']['arch']} / {first['model']['encoder']} at "
              f"{first['model']['height']}x{first['model']['width']}; metrics at each image's own size. mDice and "
              "mIoU: per-image Dice and IoU of the polyp class, averaged over images, with 95% bootstrap "
              "intervals; the other columns as the polyp papers' toolbox computes them (pysodmetrics)."),
        ("table", header, rows),
    ]
    for t in sets:
        name = t["selection"]["name"]
        for kind, *a in _blocks(t):
            if kind == "h":
                b.append(("h", a[0] + 1, name if a[0] == 1 else a[1]))
            elif kind == "img":
                b.append(("img", f"{name}/{a[0]}", a[1]))
            else:
                b.append((kind, *a))
    return b


def write_combined_reports(tmp: Path, combined: dict[str, Any]) -> None:
    blocks = _combined_blocks(combined)
    (tmp / "report.md").write_text(_markdown(blocks))
    (tmp / "report.html").write_text(_html(blocks, tmp))


def write_reports(tmp: Path, summary: dict[str, Any]) -> None:
    blocks = _blocks(summary)
    (tmp / "report.md").write_text(_markdown(blocks))
    (tmp / "report.html").write_text(_html(blocks, tmp))


def format_sets_table(combined: dict[str, Any]) -> str:
    """One row per test set, aligned for a terminal, with each set's leak below."""
    header, rows = _sets_table(combined["test_sets"])
    lines = text_table([header, *rows])
    first = combined["test_sets"][0]
    lines += ["", f"threshold {first['threshold']:.2f} ({first['threshold_source']}); mDice/mIoU: per-image means "
                  "over polyp frames with masks, with 95% bootstrap intervals",
              f"frame level: verdict '{first['frame']['verdict']}' at operating point "
              f"{first['frame']['operating_point']:.4f} ({first['frame']['operating_point_source']}); frame AUC with "
              "95% bootstrap interval; 'flagged free @95% sens.': read off each set's own ROC"]
    lines += [f"{t['selection']['name']}: {_leak_line(t)}" for t in combined["test_sets"]]
    lines.append(f"report: {Path(combined['out']) / 'report.html'}")
    return "\n".join(lines)


def format_summary_table(summary: dict[str, Any]) -> str:
    """The terminal table: headline per-image mDice and mIoU with CIs, then every metric, then the leak."""
    if "test_sets" in summary:
        return format_sets_table(summary)
    n = summary["n_images"]
    f = summary["frame"]
    frame_line = (f"frame level: {f['n_polyp']} polyp / {f['n_polyp_free']} polyp-free frames; verdict '{f['verdict']}' "
                  f"at {f['operating_point']:.4f}: sensitivity {_pct(f['sensitivity'])}, specificity "
                  f"{_pct(f['specificity'])}, AUC {_auc_text(f)}")
    if summary.get("metrics") is None:
        return "\n".join([f"{n} images: {_what_text(summary)}", frame_line, "", _leak_line(summary),
                          f"report: {Path(summary['out']) / 'report.html'}"])
    width = max(len(label) for label, _ in metrics.METRICS.values()) + 2
    lines = [
        f"{n} images: {_what_text(summary)}",
        f"threshold {summary['threshold']:.2f} ({summary['threshold_source']}), {runtime_text(summary)}"
        + (f", 95% CIs from {summary['bootstrap']['resamples']} bootstrap resamples" if summary.get("ci") else ""),
        "",
        f"mDice {_ci_text(summary, 'per-image', 'dice')}   mIoU {_ci_text(summary, 'per-image', 'iou')}   "
        "(per-image means, polyp class)",
        f"two-class mIoU (polyp + background) {_ci_text(summary, 'micro', 'miou2')} micro, "
        f"{_ci_text(summary, 'per-image', 'miou2')} per-image",
        "",
        f"{'metric':<{width}}{'per-image mean':<26}micro (pooled pixels)",
    ]
    for k, (label, _) in metrics.METRICS.items():
        lines.append(f"{label:<{width}}{_ci_text(summary, 'per-image', k):<26}{_ci_text(summary, 'micro', k)}")
    hd = summary["hd95"]
    lines.append(f"{'HD95 (pixels)':<{width}}{hd['mean']:.1f} mean, {hd['median']:.1f} median")
    for k, (label, _) in metrics.SOD_MEASURES.items() if summary.get("sod") else ():
        lines.append(f"{label:<{width}}{summary['sod'][k]:.3f}")
    if summary["pranet_mdice"] is not None:
        lines.append(f"{'PraNet mDice (256 thr.)':<{width}}{summary['pranet_mdice']:.3f}")
    lines += ["", frame_line, "", _leak_line(summary), f"report: {Path(summary['out']) / 'report.html'}"]
    return "\n".join(lines)
