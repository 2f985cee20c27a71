"""Image/mask folders in any known layout: finding and pairing files, sequences, a torch Dataset
(`polypseg data check` reads them in ``datacheck``).

Layouts (folder names matched case-insensitively):
  ``images/`` + ``masks/``                      this project's staging, Kvasir-SEG
  ``Original/`` + ``Ground Truth/``             the CVC-ClinicDB distribution (TIFFs)
  ``PNG/Original/`` + ``PNG/Ground Truth/``     the Kaggle mirror (also ``TIF/...``)
The folder given may also be one level above a dataset root (e.g. a folder holding ``CVC-ClinicDB/``).

Images are RGB uint8 ``H x W x 3``; masks are uint8 ``H x W`` with values {0, 1}.
"""

from __future__ import annotations

import csv
import dataclasses
import os
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from .crop import picture, picture_mask
from .errors import PolypsegError
from .media import IMAGE_SUFFIXES, id_sort_key, image_files, normalize_id, read_image, read_mask, shape_text


# name -> (image folder, mask folder), relative to the dataset root. Order is the order of preference:
# the Kaggle mirror ships the same frames as PNG and TIF, and PNG reads faster and without quirks.
LAYOUTS: dict[str, tuple[str, str]] = {
    "images+masks": ("images", "masks"),
    "cvc-original": ("Original", "Ground Truth"),
    "kaggle-png": ("PNG/Original", "PNG/Ground Truth"),
    "kaggle-tif": ("TIF/Original", "TIF/Ground Truth"),
}

SEQUENCES_CSV = "sequences.csv"
# Kvasir-SEG and other sets without videos may still carry PraNet's sides: ``id,pranet_split``.
PRANET_CSV = "pranet_split.csv"
README_SOURCE = "CVC-ClinicDB README table"
CVC_CLINICDB_FRAMES = 612
# Last frame of each of the 29 sequences, from CVC-ClinicDB's own README.txt (sequence i = frames
# after the previous end up to this one). Used when a copy of the dataset comes without sequences.csv.
CVC_SEQUENCE_ENDS = (
    25, 50, 67, 78, 103, 126, 151, 177, 199, 205, 227, 252, 277, 297, 317,
    342, 363, 383, 408, 428, 447, 466, 478, 503, 528, 546, 571, 591, 612,
)
# The 62 CVC-ClinicDB frames in PraNet's TestDataset (see the data's SOURCE.md).
PRANET_TEST_FRAMES = (
    14, 21, 25, 31, 42, 50, 52, 61, 65, 66, 73, 80, 89, 100, 106, 119, 134, 148, 154, 163, 166, 171,
    179, 181, 185, 191, 205, 240, 251, 266, 279, 287, 300, 307, 349, 353, 374, 381, 388, 397, 400, 404,
    425, 429, 431, 442, 453, 459, 464, 474, 481, 483, 492, 526, 529, 545, 555, 559, 561, 569, 571, 575,
)


@dataclass(frozen=True)
class Pair:
    """One frame: its image, its mask (None for frames without one) and what is known of its content."""

    id: str
    image: Path
    mask: Path | None
    sequence: int | None
    source: str = ""  # the dataset's name (its folder's name); ids carry it as "source/id" when several are read
    # Frames without a mask: True = shows a polyp (counts for frame-level sensitivity only), False =
    # polyp-free (every pixel background). None: the mask says (a frame with a mask).
    polyp: bool | None = None
    # A polyp-free view cut out of a polyp frame (``polyp_free_views``): the frame's box (top, bottom, left,
    # right) that holds no polyp pixel; the pair then reads as that box of the image, all background.
    view: tuple[int, int, int, int] | None = None

    @property
    def polyp_free(self) -> bool:
        """A frame known to show no polyp without reading its mask (masked frames: read the mask)."""
        return self.polyp is False


@dataclass
class DatasetIndex:
    root: Path
    layout: str
    pairs: list[Pair]
    unpaired_images: list[Path]
    unpaired_masks: list[Path]
    sequence_source: str | None
    # id -> "train" | "test" for the classic PraNet split, where known; empty otherwise.
    pranet: dict[str, str] = field(default_factory=dict)
    # Several folders read together (``index_dataset([A, B])``): name -> each folder's own index. The
    # pairs above are then all of theirs, with ids "name/id"; empty for a single folder.
    sources: dict[str, "DatasetIndex"] = field(default_factory=dict)
    # "masks": image/mask pairs | "frames": frames without masks (polyp-free folders, or a frame-level set
    # with positives/ and negatives/)
    kind: str = "masks"

    @property
    def has_sequences(self) -> bool:
        return self.sequence_source is not None

    @property
    def name(self) -> str:
        return self.root.name


# ---------------------------------------------------------------------------------------------------
# Finding and pairing files



def _child(folder: Path, relative: str) -> Path | None:
    """``folder/relative`` with each part matched case-insensitively (READMEs spell them both ways)."""
    current = folder
    for part in Path(relative).parts:
        if not current.is_dir():
            return None
        matches = [p for p in current.iterdir() if p.is_dir() and p.name.lower() == part.lower()]
        if len(matches) != 1:
            return None
        current = matches[0]
    return current


def _layouts_in(folder: Path) -> list[str]:
    found = [name for name, (img, msk) in LAYOUTS.items() if _child(folder, img) and _child(folder, msk)]
    if found == ["kaggle-png", "kaggle-tif"]:
        found = ["kaggle-png"]  # the same frames twice: take the PNG copy
    return found


def _expected_layouts() -> str:
    return "; ".join(f"'{img}/' with '{msk}/'" for img, msk in LAYOUTS.values())


def _find_layout(root: Path) -> tuple[Path, str]:
    """(dataset root, layout name) for ``root`` or, if unambiguous, one sub-folder of it."""
    found = _layouts_in(root)
    if len(found) == 1:
        return root, found[0]
    if len(found) > 1:
        raise PolypsegError(
            f"The folder {root} holds more than one dataset layout ({', '.join(found)}), so it is not clear "
            "which images to use. Point polypseg at a folder holding just one pair of image and mask folders."
        )
    subfolders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    below = [(sub, name) for sub in subfolders for name in _layouts_in(sub)]
    if len(below) == 1:
        return below[0]
    if len(below) > 1:
        where = ", ".join(f"{sub.name}/ ({name})" for sub, name in below)
        raise PolypsegError(
            f"The folder {root} holds several datasets: {where}. Point polypseg at one of them."
        )
    seen = ", ".join(f"'{p.name}/'" for p in subfolders) or "no sub-folders"
    hint = ""
    if any(root.name.lower() == Path(rel).name.lower() for pair in LAYOUTS.values() for rel in pair):
        hint = f" {root.name}/ looks like one half of a dataset: point polypseg at {root.parent} instead."
    raise PolypsegError(
        f"No known image/mask layout in {root} (it has {seen}).{hint} Expected sub-folders "
        f"{_expected_layouts()} (names in any case), in this folder or in one folder below it. Put the "
        "frames in 'images/' and their masks, with the same file names, in 'masks/'."
    )



def scan_folder(root: str | Path) -> DatasetIndex:
    """The index of ``root`` (possibly with no pairs: ``datacheck.check_dataset`` reports that case)."""
    given = _existing_folder(root)
    data_root, layout = _find_layout(given)
    image_dir, mask_dir = (_child(data_root, rel) for rel in LAYOUTS[layout])
    images, masks = image_files(image_dir), image_files(mask_dir)
    ids = sorted(images.keys() & masks.keys(), key=id_sort_key)
    sequences, source, pranet = _sequences(data_root, given, ids)
    pairs = [Pair(i, images[i], masks[i], sequences.get(i) if sequences else None) for i in ids]
    return DatasetIndex(
        root=data_root,
        layout=layout,
        pairs=pairs,
        unpaired_images=[images[i] for i in sorted(images.keys() - masks.keys(), key=id_sort_key)],
        unpaired_masks=[masks[i] for i in sorted(masks.keys() - images.keys(), key=id_sort_key)],
        sequence_source=source,
        pranet=pranet,
    )


FRAME_LEVEL_FOLDERS = {"positives": True, "negatives": False}


def _sequence_numbers(names: list[str]) -> dict[str, int]:
    """Sequence names (numbers or words such as 'seq3') -> numbers 1, 2, ... in natural order."""
    def key(name: str) -> tuple:
        digits = "".join(c for c in name if c.isdigit())
        return (name.rstrip("0123456789"), int(digits) if digits else -1, name)

    return {name: n for n, name in enumerate(sorted(set(names), key=key), start=1)}


def _frame_files(folder: Path) -> tuple[dict[str, Path], dict[str, int] | None, str | None]:
    """(id -> image, id -> sequence or None, where the sequences came from) for a folder of frames
    without masks: images directly in it or in ``images/``, or in sub-folders (one sub-folder = one
    sequence, unless ``sequences.csv`` with ``sequence,id`` says otherwise)."""
    direct = [p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
    images_dir = _child(folder, "images")
    if direct:
        files, groups = image_files(folder), None
    elif images_dir is not None:
        files, groups = image_files(images_dir), None
    else:
        subs = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
        files, groups = {}, {}
        for sub in subs:
            if not any(q.suffix.lower() in IMAGE_SUFFIXES for q in sub.iterdir()):
                continue
            for frame_id, path in image_files(sub).items():
                if frame_id in files:
                    raise PolypsegError(
                        f"{files[frame_id]} and {path} are both frame '{frame_id}'. Give every frame of {folder} "
                        "its own file name."
                    )
                files[frame_id], groups[frame_id] = path, sub.name
        if not files:
            raise PolypsegError(
                f"The folder {folder} holds no image files ({', '.join(IMAGE_SUFFIXES)}), directly, in images/ "
                "or in sub-folders. Point polypseg at the folder of frames."
            )
    path = folder / SEQUENCES_CSV
    if path.is_file():
        rows = read_csv_rows(path, {"id", "sequence"}, "the columns 'sequence,id', one row per frame")
        named = {normalize_id((r["id"] or "").strip()): (r["sequence"] or "").strip() for r in rows}
        missing = sorted(set(files) - set(named), key=id_sort_key)
        if missing:
            raise PolypsegError(
                f"{path} gives no sequence for {len(missing)} of the {len(files)} frames (e.g. "
                f"{', '.join(missing[:5])}). Add them, or remove the file."
            )
        numbers = _sequence_numbers([named[i] for i in files])
        return files, {i: numbers[named[i]] for i in files}, SEQUENCES_CSV
    if groups:
        numbers = _sequence_numbers(list(groups.values()))
        return files, {i: numbers[g] for i, g in groups.items()}, "sub-folders"
    return files, None, None


def scan_frames(root: str | Path, polyp: bool | None = None) -> DatasetIndex:
    """A folder of frames without masks. ``polyp``: what they show (False: polyp-free frames, as given
    with --negatives). A folder holding ``positives/`` and/or ``negatives/`` is a frame-level set: polyp
    frames without masks and polyp-free frames, ids ``positives/ID`` and ``negatives/ID``."""
    given = _existing_folder(root)
    parts = {name: _child(given, name) for name in FRAME_LEVEL_FOLDERS}
    parts = {name: folder for name, folder in parts.items() if folder is not None}
    pairs: list[Pair] = []
    source = None
    if parts:
        offset = 0
        for name, folder in parts.items():
            files, sequences, found = _frame_files(folder)
            source = source or found
            for frame_id in sorted(files, key=id_sort_key):
                # sequences of each part numbered apart: a polyp frame never shares a sequence with a polyp-free one
                seq = sequences[frame_id] + offset if sequences else None
                pairs.append(Pair(f"{name}/{frame_id}", files[frame_id], None, seq,
                                  polyp=FRAME_LEVEL_FOLDERS[name]))
            offset += max(sequences.values()) if sequences else 0
        # a frame-level set's sequences are known only if every part has them
        if any(p.sequence is None for p in pairs):
            pairs = [dataclasses.replace(p, sequence=None) for p in pairs]
            source = None
        layout = "+".join(parts)
    else:
        files, sequences, source = _frame_files(given)
        pairs = [Pair(i, files[i], None, sequences[i] if sequences else None, polyp=polyp)
                 for i in sorted(files, key=id_sort_key)]
        layout = "frames"
    return DatasetIndex(root=given, layout=layout, pairs=pairs, unpaired_images=[], unpaired_masks=[],
                        sequence_source=source, kind="frames")


def is_frame_folder(root: str | Path) -> bool:
    """Whether ``root`` holds frames without masks rather than an image/mask layout."""
    given = Path(root).expanduser()
    if not given.is_dir():
        return False
    if any(_child(given, name) for name in FRAME_LEVEL_FOLDERS):
        return True
    try:
        _find_layout(given)
        return False
    except PolypsegError:
        pass
    if _child(given, "masks") is not None:
        return False  # half a dataset: the layout's own message says what is missing
    try:
        return bool(_frame_files(given)[0])
    except (PolypsegError, OSError):
        return False  # no frames either: the layout's own message says what was expected


def _existing_folder(root: str | Path) -> Path:
    given = Path(root).expanduser()
    if not given.exists():
        raise PolypsegError(f"The data folder {given} does not exist. Check the path.")
    if not given.is_dir():
        raise PolypsegError(f"{given} is a file, not a folder. Give the folder that holds the dataset.")
    if not any(given.iterdir()):
        raise PolypsegError(
            f"The data folder {given} is empty. Put the frames in '{given}/images/' and their masks, with "
            f"the same file names, in '{given}/masks/'."
        )
    return given


def _no_pairs_message(index: DatasetIndex) -> str:
    def sample(paths: list[Path]) -> str:
        return ", ".join(p.name for p in paths[:3]) + (" ..." if len(paths) > 3 else "")

    image_dir, mask_dir = index.unpaired_images[0].parent, index.unpaired_masks[0].parent
    return (
        f"No image in {image_dir} has a mask with the same file name in {mask_dir} (images: "
        f"{sample(index.unpaired_images)}; masks: {sample(index.unpaired_masks)}). Name each mask like its "
        "image (numbers may differ in zero padding, e.g. 1.tif and 001.png)."
    )


def data_folders(data: str | Path | Sequence[str | Path]) -> list[str]:
    """One folder or several (``Config.data`` may be either) -> a list of folders."""
    folders = [str(data)] if isinstance(data, (str, Path)) else [str(d) for d in data]
    if not folders:
        raise PolypsegError("No data folder was given. Pass --data DIR (more than once for several data sets).")
    return folders


def index_dataset(root: str | Path | Sequence[str | Path], negatives: Sequence[str | Path] = ()) -> DatasetIndex:
    """Find the layout under ``root``, pair images with masks by id, and attach sequences if known.

    ``root`` may be a list of folders: their pairs are read together, each frame's id becoming
    ``"name/id"`` (name: the dataset folder's name), and ``index.sources`` keeps every folder's own index
    so that splits and the leak stay per folder. ``negatives``: folders of polyp-free frames without
    masks (``scan_frames``), read the same way beside them. A folder of ``positives/`` and
    ``negatives/`` frames (a frame-level set) may be given as ``root`` too.
    """
    folders = data_folders(root)
    indexes = []
    for folder in folders:
        if is_frame_folder(folder):
            index = scan_frames(folder)
            if any(p.polyp is None for p in index.pairs):
                raise PolypsegError(
                    f"{folder} holds frames without masks. If they are polyp-free, give the folder with "
                    "--negatives DIR; a folder of frame-level labels holds positives/ and negatives/; for "
                    "segmentation put masks in masks/ beside images/."
                )
        else:
            index = scan_folder(folder)
            if not index.pairs:
                raise PolypsegError(_no_pairs_message(index))
        indexes.append(index)
    indexes += [scan_frames(folder, polyp=False) for folder in negatives]
    if len(indexes) == 1:
        return indexes[0]
    return _combine(indexes)


def _combine(indexes: list[DatasetIndex]) -> DatasetIndex:
    names = [i.name for i in indexes]
    clash = sorted({n for n in names if names.count(n) > 1})
    if clash:
        raise PolypsegError(
            f"Two data folders have the same name ({', '.join(clash)}), so their frames cannot be told apart in "
            "a split. Rename one of the folders, or give each data set once."
        )
    pairs = [dataclasses.replace(p, id=f"{i.name}/{p.id}", source=i.name) for i in indexes for p in i.pairs]
    return DatasetIndex(
        root=Path(os.path.commonpath([str(i.root.resolve()) for i in indexes])),
        layout="+".join(dict.fromkeys(i.layout for i in indexes)),
        pairs=pairs,
        unpaired_images=[f for i in indexes for f in i.unpaired_images],
        unpaired_masks=[f for i in indexes for f in i.unpaired_masks],
        sequence_source=None,  # per folder: see sources
        pranet={f"{i.name}/{k}": v for i in indexes for k, v in i.pranet.items()},
        sources={i.name: i for i in indexes},
        kind="masks" if any(i.kind == "masks" for i in indexes) else "frames",
    )


# ---------------------------------------------------------------------------------------------------
# Sequences


def read_csv_rows(path: Path, columns: set[str], needs: str) -> list[dict[str, str]]:
    """The rows of a small CSV that must have ``columns``; ``needs`` says what the file should hold."""
    try:
        with path.open(newline="") as f:
            rows = list(csv.DictReader(f))
    except FileNotFoundError:
        raise PolypsegError(f"The file {path} does not exist.") from None
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise PolypsegError(f"Cannot read {path}: {exc}. Fix or remove the file.") from exc
    if not rows or not columns <= set(rows[0]):
        raise PolypsegError(f"{path} needs {needs}.")
    return rows


def _read_sequences_csv(path: Path, ids: list[str]) -> tuple[dict[str, int], dict[str, str]]:
    """(id -> sequence, id -> pranet side) from a ``id,sequence[,pranet_split]`` file."""
    rows = read_csv_rows(path, {"id", "sequence"}, "the columns 'id,sequence' (and optionally 'pranet_split'), "
                         "one row per frame. Fix the file, or remove it to go without sequence information")
    sequences: dict[str, int] = {}
    pranet: dict[str, str] = {}
    for line, row in enumerate(rows, start=2):
        frame_id, value = normalize_id((row["id"] or "").strip()), (row["sequence"] or "").strip()
        if not value.isdigit():
            raise PolypsegError(
                f"{path}, line {line}: the sequence '{value}' of frame '{frame_id}' is not a whole number. "
                "Give every frame its sequence number."
            )
        sequences[frame_id] = int(value)
        side = (row.get("pranet_split") or "").strip().lower()
        if side:
            pranet[frame_id] = side
    missing = [i for i in ids if i not in sequences]
    if missing:
        raise PolypsegError(
            f"{path} gives no sequence for {len(missing)} of the {len(ids)} frames (e.g. "
            f"{', '.join(missing[:5])}). Add them, or remove the file to go without sequence information."
        )
    return sequences, pranet


def _is_cvc_clinicdb(ids: list[str]) -> bool:
    # Only the complete numbering 1..612 is taken as CVC-ClinicDB: other datasets also number frames
    # from 1 (ETIS, CVC-ColonDB), and the README table must not be applied to them.
    return ids == [f"{n:03d}" for n in range(1, CVC_CLINICDB_FRAMES + 1)]


def _cvc_sequences(ids: list[str]) -> dict[str, int]:
    start, sequences = 1, {}
    for number, end in enumerate(CVC_SEQUENCE_ENDS, start=1):
        sequences.update({f"{n:03d}": number for n in range(start, end + 1)})
        start = end + 1
    return {i: sequences[i] for i in ids}


def _sequences(
    data_root: Path, given: Path, ids: list[str]
) -> tuple[dict[str, int] | None, str | None, dict[str, str]]:
    """(id -> sequence, its source, id -> pranet side), from sequences.csv or CVC-ClinicDB's README."""
    for folder in dict.fromkeys((data_root, given)):  # the dataset root first, then the folder given
        path = folder / SEQUENCES_CSV
        if path.is_file():
            sequences, pranet = _read_sequences_csv(path, ids)
            return {i: sequences[i] for i in ids}, SEQUENCES_CSV, {i: pranet[i] for i in ids if i in pranet}
    if ids and _is_cvc_clinicdb(ids):
        test = {f"{n:03d}" for n in PRANET_TEST_FRAMES}
        return _cvc_sequences(ids), README_SOURCE, {i: "test" if i in test else "train" for i in ids}
    for folder in dict.fromkeys((data_root, given)):
        path = folder / PRANET_CSV
        if path.is_file():
            return None, None, _read_pranet_csv(path, ids)
    return None, None, {}


def _read_pranet_csv(path: Path, ids: list[str]) -> dict[str, str]:
    """id -> "train" | "test" from an ``id,pranet_split`` file (frames it leaves out are on neither side)."""
    rows = read_csv_rows(path, {"id", "pranet_split"}, "the columns 'id,pranet_split' (train or test), one row per frame")
    known = set(ids)
    sides = {}
    for line, row in enumerate(rows, start=2):
        frame_id = normalize_id((row["id"] or "").strip())
        side = (row["pranet_split"] or "").strip().lower()
        if side not in ("train", "test"):
            raise PolypsegError(f"{path}, line {line}: the side '{side}' of '{frame_id}' is neither train nor test.")
        if frame_id in known:
            sides[frame_id] = side
    return sides


# ---------------------------------------------------------------------------------------------------
# Reading files



def load_pair(pair: Pair) -> tuple[np.ndarray, np.ndarray]:
    """(RGB image, {0,1} mask) of one frame; the mask must have the image's size. A polyp-free frame
    without a mask file has an all-background mask; a polyp frame without one cannot be loaded for
    segmentation (it counts for frame-level measures only)."""
    image = read_image(pair.image)
    if pair.view is not None:
        top, bottom, left, right = pair.view
        return np.ascontiguousarray(image[top:bottom, left:right]), np.zeros((bottom - top, right - left), np.uint8)
    if pair.mask is None:
        if pair.polyp:
            raise PolypsegError(
                f"{pair.image} shows a polyp but has no mask, so it cannot be trained on or scored for Dice "
                "(it counts for frame-level sensitivity only)."
            )
        return image, np.zeros(image.shape[:2], np.uint8)
    mask, _ = read_mask(pair.mask)
    if mask.shape != image.shape[:2]:
        raise PolypsegError(
            f"The mask {pair.mask} is {shape_text(mask.shape)} but its image {pair.image} is "
            f"{shape_text(image.shape)} (width x height). A mask must have its image's size; fix or remove "
            "the pair."
        )
    return image, mask


def polyp_free_views(pairs: Sequence[Pair], aspect: float, seed: int, scales: Sequence[float] | None = None,
                     progress: bool = False) -> list[Pair]:
    """Polyp-free views of the polyp frames among ``pairs`` (frames with a non-empty mask): for each, the
    boxes of ``polypseg.views.polyp_free_boxes`` (width / height ``aspect``, at ``scales``), as polyp-free
    pairs ``ID@view-N`` of the same source. Only pass training frames: a view shares its frame's side."""
    from .progress import progress as progress_lines
    from .views import VIEW_SCALES, polyp_free_boxes

    views = []
    for pair in progress_lines(pairs, desc="polyp-free views", unit="frame", enabled=progress):
        if pair.mask is None or pair.polyp is False:
            continue
        image, mask = load_pair(pair)
        if not mask.any():
            continue
        boxes = polyp_free_boxes(image, mask, aspect, seed=(seed, zlib.crc32(pair.id.encode())),
                                 scales=VIEW_SCALES if scales is None else scales)
        views += [dataclasses.replace(pair, id=f"{pair.id}@view-{n}", mask=None, polyp=False, view=tuple(box))
                  for n, box in enumerate(boxes, 1)]
    return views


# ---------------------------------------------------------------------------------------------------
# torch Dataset


class SegmentationDataset(torch.utils.data.Dataset):
    """Pairs -> ``dict(image=float32 3xHxW, mask=float32 1xHxW in {0,1}, polyp=float32 0/1, id=str)``.

    ``transform`` is an albumentations Compose from ``polypseg.transforms`` (it normalises); without one
    the image is only scaled to [0, 1], which is meant for tests. ``crop`` and ``corner``: each frame is
    first cut to its endoscopic image and its corner blacked out (``polypseg.crop.picture``), the mask
    alike. ``polyp`` is 1 when the frame shows a polyp (its mask is not empty), 0 for polyp-free frames.
    """

    def __init__(self, pairs: Sequence[Pair], transform=None, crop: bool = False,
                 corner: tuple[float, float] | None = None):
        self.pairs = list(pairs)
        self.transform = transform
        self.crop, self.corner = crop, corner

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int) -> dict[str, Any]:
        pair = self.pairs[i]
        image, mask = load_pair(pair)
        polyp = float(mask.any())
        if self.crop or self.corner:
            image, box = picture(image, self.crop, self.corner)
            mask = picture_mask(mask, box, self.corner)
        if self.transform is not None:
            out = self.transform(image=image, mask=mask)
            image, mask = out["image"], out["mask"]
        else:
            image = image.astype(np.float32) / 255.0
        return {
            "image": torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32)),
            "mask": torch.from_numpy(np.ascontiguousarray(mask[None], dtype=np.float32)),
            "polyp": torch.tensor(polyp, dtype=torch.float32),
            "id": pair.id,
        }


# ---------------------------------------------------------------------------------------------------
# image files to predict on (folders and files given by the user, no masks)



