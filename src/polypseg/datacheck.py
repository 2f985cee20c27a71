"""`polypseg data check`: every image and mask of a folder read, and what would stop or mislead training
(unreadable files, size mismatches, unpaired files, non-binary and empty masks, duplicates, sequences);
``usable_pairs`` is the same reading before a run starts, so a bad file fails at once, not mid-epoch."""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .data import Pair, is_frame_folder, scan_folder, scan_frames
from .media import read_image, read_mask, shape_text
from .errors import PolypsegError
from .progress import progress


def sizes_text(sizes: Counter, most: int = 3) -> str:
    """Image sizes in one short line: the most common ones, the range, and how many distinct sizes."""
    if not sizes:
        return "-"
    common = ", ".join(f"{w}x{h} ({n})" for (w, h), n in sizes.most_common(most))
    if len(sizes) <= most:
        return common
    by_area = sorted(sizes, key=lambda wh: (wh[0] * wh[1], wh))
    (w0, h0), (w1, h1) = by_area[0], by_area[-1]
    return f"{len(sizes)} sizes, {w0}x{h0} to {w1}x{h1}; most common {common}"


@dataclass
class PairCheck:
    """What reading one pair found. ``problems`` make the pair unusable (one sentence each)."""

    pair: Pair
    size: tuple[int, int] | None = None  # (width, height) of the image
    digest: str | None = None
    nonbinary: int = 0
    empty: bool = False
    problems: list[str] = field(default_factory=list)
    unreadable: list[tuple[Path, str]] = field(default_factory=list)


def check_pair(pair: Pair) -> PairCheck:
    """Read one image and its mask; say what would stop training or evaluation on it."""
    out = PairCheck(pair)
    image = mask = None
    try:
        image = read_image(pair.image)
        out.size = (image.shape[1], image.shape[0])
        out.digest = hashlib.sha256(str(image.shape).encode() + image.tobytes()).hexdigest()
    except PolypsegError as exc:
        why = str(exc.__cause__ or exc)
        out.unreadable.append((pair.image, why))
        out.problems.append(f"Cannot read {pair.image}: {why}.")
    if pair.mask is None:  # a frame without a mask: only the image is read
        out.empty = pair.polyp is not True
        return out
    try:
        mask, out.nonbinary = read_mask(pair.mask)
        out.empty = not mask.any()
    except PolypsegError as exc:
        why = str(exc.__cause__ or exc)
        out.unreadable.append((pair.mask, why))
        out.problems.append(f"Cannot read {pair.mask}: {why}.")
    if image is not None and mask is not None and mask.shape != image.shape[:2]:
        out.problems.append(
            f"The mask {pair.mask} is {shape_text(mask.shape)} but its image is {shape_text(image.shape)} "
            "(width x height)."
        )
    return out


def check_pairs(pairs: Sequence[Pair], desc: str = "checking") -> list[PairCheck]:
    """``check_pair`` for every pair, decoding in threads (the decoders release the GIL)."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        return list(progress(pool.map(check_pair, pairs), total=len(pairs), desc=desc, unit="pair"))


def usable_pairs(pairs: Sequence[Pair], skip_bad: bool = False, what: str = "training") -> tuple[list[Pair], list[PairCheck]]:
    """(the pairs that can be used, the checks of those that cannot). Bad pairs are an error unless
    ``skip_bad``: a run must not die mid-epoch inside a data loader worker on a file read at the start."""
    checks = check_pairs(pairs)
    bad = [c for c in checks if c.problems]
    if bad and not skip_bad:
        listed = " ".join(f"{c.pair.id}: {' '.join(c.problems)}" for c in bad[:5])
        more = f" (and {len(bad) - 5} more)" if len(bad) > 5 else ""
        raise PolypsegError(
            f"{len(bad)} of the {len(pairs)} image/mask pairs for {what} cannot be used{more}. {listed} Fix or "
            "remove them (`polypseg data check DIR` lists every problem), or pass --skip-bad to leave them out."
        )
    return [c.pair for c in checks if not c.problems], bad


@dataclass
class CheckReport:
    root: Path
    layout: str
    pairs: int
    sizes: Counter  # (width, height) -> number of images
    unpaired_images: list[Path]
    unpaired_masks: list[Path]
    unreadable: list[tuple[Path, str]]  # (file, why)
    size_mismatches: list[str]  # one sentence per pair
    nonbinary_masks: int
    nonbinary_pixels: int
    empty_masks: list[str]  # ids
    duplicate_images: list[list[str]]  # groups of ids with identical pixels
    sequences: int
    sequence_source: str | None
    pranet_sides: Counter = field(default_factory=Counter)  # "train"/"test" -> frames
    kind: str = "masks"  # "frames": a folder of frames without masks
    polyp_free: int = 0  # frames known to show no polyp, without a mask file
    polyp_unmasked: int = 0  # frames known to show a polyp, without a mask (frame-level sensitivity only)
    unlabelled: int = 0  # frames without a mask of which nothing is known (a folder not given as --negatives)

    @property
    def problems(self) -> list[str]:
        """What makes the data unusable for training, one paragraph each."""
        out = []
        if self.pairs == 0:
            out.append(
                "No image has a mask with the same file name, so there is nothing to train on. Name each "
                "mask like its image."
            )
        for path, why in self.unreadable:
            out.append(f"Cannot read {path}: {why}. Replace or remove it (with its image or mask).")
        out += [f"{m} Fix or remove the pair." for m in self.size_mismatches]
        return out

    @property
    def warnings(self) -> list[str]:
        """What the data can be used with, but the user should know."""
        out = []
        for what, paths in (("images", self.unpaired_images), ("masks", self.unpaired_masks)):
            if paths:
                names = ", ".join(p.name for p in paths[:5]) + (" ..." if len(paths) > 5 else "")
                out.append(f"{len(paths)} {what} have no partner and are left out: {names}.")
        if self.nonbinary_masks:
            out.append(
                f"{self.nonbinary_masks} masks hold {self.nonbinary_pixels} pixels that are neither 0 nor 255 "
                "(JPEG noise or stray values); they are thresholded at 128."
            )
        if self.unlabelled:
            out.append(
                f"{self.unlabelled} frames have no mask. If they are polyp-free, use the folder with --negatives "
                "(train, evaluate) and check it with `polypseg data check --negatives DIR`; for frame-level "
                "labels put them in positives/ and negatives/; for segmentation add masks/."
            )
        if self.empty_masks and self.kind == "masks":
            out.append(
                f"{len(self.empty_masks)} masks contain no polyp: {', '.join(self.empty_masks[:10])}"
                + (" ..." if len(self.empty_masks) > 10 else "")
                + ". Per-image Dice is undefined for them when the prediction is empty too."
            )
        groups = self.duplicate_images
        if groups:
            shown = "; ".join(", ".join(g) for g in groups[:5]) + (" ..." if len(groups) > 5 else "")
            out.append(f"{len(groups)} groups of frames have identical pixels ({shown}); they can leak across a split.")
        if self.sequence_source is None:
            out.append(
                "No sequence information (no sequences.csv), so only frame-level ('random') splits can be "
                "made, and their test scores are optimistic when frames come from videos. Add sequences.csv "
                "with columns id,sequence to make grouped splits."
            )
        return out

    @property
    def usable(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {
            "root": str(self.root),
            "layout": self.layout,
            "pairs": self.pairs,
            "sizes": {f"{w}x{h}": n for (w, h), n in self.sizes.most_common()},
            "unpaired_images": [str(p) for p in self.unpaired_images],
            "unpaired_masks": [str(p) for p in self.unpaired_masks],
            "unreadable": [{"file": str(p), "error": why} for p, why in self.unreadable],
            "size_mismatches": self.size_mismatches,
            "nonbinary_masks": self.nonbinary_masks,
            "nonbinary_pixels": self.nonbinary_pixels,
            "empty_masks": self.empty_masks,
            "duplicate_images": self.duplicate_images,
            "sequences": self.sequences,
            "sequence_source": self.sequence_source,
            "pranet_sides": dict(self.pranet_sides),
            "kind": self.kind,
            "polyp_free": self.polyp_free,
            "polyp_unmasked": self.polyp_unmasked,
            "unlabelled": self.unlabelled,
            "usable": self.usable,
            "problems": self.problems,
            "warnings": self.warnings,
        }

    def table(self) -> str:
        sizes = sizes_text(self.sizes)
        if len(self.sizes) > 1:
            sizes += " (mixed sizes are fine: each frame is scaled, aspect kept, to fit the model's input and padded)"
        pranet = ", ".join(f"{n} {side}" for side, n in sorted(self.pranet_sides.items())) or "-"
        rows = [
            ("folder", str(self.root)),
            ("layout", self.layout),
            ("pairs", str(self.pairs)) if self.kind == "masks" else ("frames (no masks)", str(self.pairs)),
            *([("polyp-free frames", str(self.polyp_free)), ("polyp frames without masks", str(self.polyp_unmasked))]
              if self.kind == "frames" else []),
            ("image sizes", sizes),
            ("unpaired files", f"{len(self.unpaired_images)} images, {len(self.unpaired_masks)} masks"),
            ("unreadable files", str(len(self.unreadable))),
            ("mask/image size mismatches", str(len(self.size_mismatches))),
            ("non-binary masks", f"{self.nonbinary_masks} files, {self.nonbinary_pixels} pixels"),
            ("empty masks", str(len(self.empty_masks))),
            ("duplicate images", str(sum(len(g) for g in self.duplicate_images))),
            ("sequences", f"{self.sequences} (from {self.sequence_source})" if self.sequence_source else "-"),
            ("PraNet split", pranet),
            ("usable", "yes" if self.usable else "NO"),
        ]
        width = max(len(name) for name, _ in rows)
        lines = [f"{name:<{width}}  {value}" for name, value in rows]
        lines += [f"problem: {text}" for text in self.problems]
        lines += [f"warning: {text}" for text in self.warnings]
        return "\n".join(lines)


def check_dataset(root: str | Path, negatives: bool = False) -> CheckReport:
    """Read every image and mask under ``root`` and report what would stop or mislead training.
    A folder of frames without masks is read as such (``negatives``: they are polyp-free frames)."""
    if negatives or is_frame_folder(root):
        index = scan_frames(root, polyp=False if negatives else None)
    else:
        index = scan_folder(root)
    checks = check_pairs(index.pairs)
    by_hash: dict[str, list[str]] = {}
    for c in checks:
        if c.digest is not None:
            by_hash.setdefault(c.digest, []).append(c.pair.id)
    return CheckReport(
        root=index.root,
        layout=index.layout,
        pairs=len(index.pairs),
        sizes=Counter(c.size for c in checks if c.size is not None),
        unpaired_images=index.unpaired_images,
        unpaired_masks=index.unpaired_masks,
        unreadable=[u for c in checks for u in c.unreadable],
        size_mismatches=[p for c in checks for p in c.problems if p.startswith("The mask ")],
        nonbinary_masks=sum(c.nonbinary > 0 for c in checks),
        nonbinary_pixels=sum(c.nonbinary for c in checks),
        empty_masks=[c.pair.id for c in checks if c.empty],
        duplicate_images=[ids for ids in by_hash.values() if len(ids) > 1],
        sequences=len({p.sequence for p in index.pairs}) if index.has_sequences else 0,
        sequence_source=index.sequence_source,
        pranet_sides=Counter(index.pranet.values()),
        kind=index.kind,
        polyp_free=sum(p.mask is None and p.polyp is False for p in index.pairs),
        polyp_unmasked=sum(p.mask is None and p.polyp is True for p in index.pairs),
        unlabelled=sum(p.mask is None and p.polyp is None for p in index.pairs),
    )
