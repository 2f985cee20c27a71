"""Train/validation/test splits as small JSON files, each with its leak count.

Frames of one colonoscopy video sequence are near-duplicates, so a frame-level split puts copies of test
frames into training and flatters the test score. Every split records how many sequences straddle its
sides (``leak``); ``sequence`` and ``kfold`` keep whole sequences on one side.

Randomness comes only from ``random.Random(seed)`` applied to ids in a fixed order, so the same seed
gives the same split on every machine and Python version.
"""

from __future__ import annotations

import dataclasses
import json
import random
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .data import DatasetIndex, Pair, read_csv_rows
from .media import id_sort_key, normalize_id
from .errors import PolypsegError
from .files import atomic_write_text

if TYPE_CHECKING:
    from .config import Config

FORMAT = "polypseg-split/1"
STRATEGIES = ("random", "sequence", "kfold", "pranet")
# A split read from a user's own list (a CSV of id,side): the strategy recorded for it.
CUSTOM = "custom"
SIDES = ("train", "val", "test")
# (val, test) when unset; train takes the rest. Random: the founding document's protocol, 267 training
# and 345 test frames out of CVC-ClinicDB's 612, as fractions for other datasets.
RANDOM_DEFAULTS = (0, 345 / 612)
SEQUENCE_DEFAULTS = (0.1, 0.5)
KFOLD_VAL_DEFAULT = 0.1
# (val, test) of a polyp-free folder split beside polyp frames of another strategy (e.g. pranet)
NEGATIVES_DEFAULTS = (0.15, 0.25)
# Random orders tried when packing whole sequences into sides; the best fit wins. Cheap for tens of
# sequences, and enough to land within a few frames of the asked sizes.
PACKING_TRIALS = 300

Size = int | float | None


@dataclass
class Split:
    strategy: str
    seed: int
    train: list[str]
    val: list[str]
    test: list[str]
    params: dict[str, Any]
    leak: dict[str, Any]
    folds: list[list[str]] | None = None
    fold: int | None = None
    data: str | None = None
    # id -> sequence for every frame of the dataset, or None when unknown; kept so that a file alone
    # can resolve k-fold validation sets and recount the leak.
    sequences: dict[str, int] | None = field(default=None, repr=False)
    # Several data folders: name -> {"data": folder, "sequences": id -> sequence or None}; the ids above
    # are then "name/id" and the leak is counted per folder.
    folders: dict[str, dict[str, Any]] | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "data": self.data,
            "strategy": self.strategy,
            "seed": self.seed,
            "params": self.params,
            "leak": self.leak,
            "fold": self.fold,
            "train": self.train,
            "val": self.val,
            "test": self.test,
            "folds": self.folds,
            "sequences": self.sequences,
            "folders": self.folders,
        }

    def summary(self) -> str:
        title = f"split '{self.strategy}' (seed {self.seed})"
        if self.fold is not None:
            title += f", fold {self.fold} of {len(self.folds or [])}"
        lines = [title + (f" of {self.data}" if self.data else "")]
        if self.folds is not None and self.fold is None:
            rows = [(f"fold {i}", ids) for i, ids in enumerate(self.folds)]
        else:
            rows = [(side, getattr(self, side)) for side in SIDES]
        if self.folders:
            return "\n".join(lines + self._folder_lines())
        lines.append(f"{'':<8}{'frames':>8}{'sequences':>11}")
        for name, ids in rows:
            seqs = len({self.sequences[i] for i in ids}) if self.sequences is not None else "?"
            lines.append(f"{name:<8}{len(ids):>8}{seqs:>11}")
        unused = self.params.get("frames", 0) - len({i for _, ids in rows for i in ids})
        if unused > 0:
            lines.append(f"{'unused':<8}{unused:>8}")
        lines.append(leak_sentence(self.leak, self.sequences))
        return "\n".join(lines)

    def _folder_lines(self) -> list[str]:
        width = max(map(len, self.folders)) + 2
        lines = [f"{'':<{width}}{'train':>7}{'val':>7}{'test':>7}"]
        for name in self.folders:
            counts = [sum(1 for i in getattr(self, side) if i.startswith(name + "/")) for side in SIDES]
            lines.append(f"{name:<{width}}" + "".join(f"{n:>7}" for n in counts))
        lines.append(f"{'all':<{width}}" + "".join(f"{len(getattr(self, side)):>7}" for side in SIDES))
        for name, info in self.folders.items():
            lines.append(f"{name}: " + leak_sentence(self.leak["per_folder"][name], info.get("sequences")))
        return lines


# ---------------------------------------------------------------------------------------------------
# The leak


def _leak(sides: dict[str, list[str]], sequences: dict[str, int] | None) -> dict[str, Any]:
    """Which sequences have frames on more than one side. With folds (no train/test yet), a sequence
    in two folds lands on train and test for some fold, so it counts as a train/test leak."""
    if sequences is None:
        return {"known": False, "sequences_straddling": None, "train_test": None, "sequences": []}
    where: dict[int, set[str]] = defaultdict(set)
    for side, ids in sides.items():
        for i in ids:
            where[sequences[i]].add(side)
    straddling = sorted(s for s, names in where.items() if len(names) > 1)
    if "train" in sides:
        train_test = sum(1 for s in straddling if {"train", "test"} <= where[s])
    else:
        train_test = len(straddling)
    return {
        "known": True,
        "sequences_straddling": len(straddling),
        "train_test": train_test,
        "sequences": straddling,
    }


def _folder_sides(sides: dict[str, list[str]], name: str) -> dict[str, list[str]]:
    prefix = name + "/"
    return {side: [i[len(prefix):] for i in ids if i.startswith(prefix)] for side, ids in sides.items()}


def _leak_per_folder(sides: dict[str, list[str]], folders: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The leak of each folder on its own (frames of two data sets are never near-duplicates), and the
    totals over the folders whose sequences are known."""
    per = {name: _leak(_folder_sides(sides, name), info.get("sequences")) for name, info in folders.items()}
    known = [leak for leak in per.values() if leak["known"]]
    return {
        "known": len(known) == len(per),
        "sequences_straddling": sum(leak["sequences_straddling"] for leak in known),
        "train_test": sum(leak["train_test"] for leak in known),
        "sequences": [f"{name}/{s}" for name, leak in per.items() for s in leak["sequences"]],
        "per_folder": per,
    }


def leak_text(split: "Split") -> str:
    """The split's leak in a sentence (one per folder for several folders)."""
    if split.folders:
        return " ".join(
            f"{name}: {leak_sentence(split.leak['per_folder'][name], info.get('sequences'))}"
            for name, info in split.folders.items()
        )
    return leak_sentence(split.leak, split.sequences)


def leak_sentence(leak: dict[str, Any], sequences: dict[str, int] | None) -> str:
    if not leak.get("known"):
        return (
            "Leak: UNKNOWN. The data has no sequence information, so frames of one video may sit on both "
            "sides and test scores may be optimistic."
        )
    total = len(set(sequences.values())) if sequences else "?"
    if leak["sequences_straddling"] == 0:
        return f"Leak: none. Each of the {total} sequences lies on one side."
    return (
        f"LEAK: {leak['sequences_straddling']} of {total} sequences have frames on more than one side "
        f"({leak['train_test']} on both train and test). Their frames are near-duplicates, so test scores "
        "are optimistic; use --strategy sequence or kfold for an honest estimate."
    )


# ---------------------------------------------------------------------------------------------------
# Sizes


def _count(value: Size, n: int, name: str) -> int:
    """A size given as a count (a whole number >= 1) or a fraction of ``n`` (below 1) -> frames."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise PolypsegError(
            f"--{name} {value!r} is not a size. Give a number of frames (a whole number, e.g. 267) or a "
            "fraction below 1 (e.g. 0.2)."
        )
    if value < 1:
        return int(value * n + 0.5)
    if value != int(value):
        raise PolypsegError(
            f"--{name} {value} is neither a whole number of frames nor a fraction below 1. Give e.g. 267 or 0.2."
        )
    return int(value)


def _counts(
    n: int, train: Size, val: Size, test: Size, defaults: tuple[float, float]
) -> tuple[tuple[int, int, int], dict[str, Any]]:
    """Frame counts for (train, val, test) and the sizes asked ("rest": what the others leave). Unset val
    and test take their defaults, except that test takes the rest when only train is given; unset train
    takes the rest."""
    val = defaults[0] if val is None else val
    if train is None and test is None:
        test = defaults[1]
    v = _count(val, n, "val")
    if train is None:
        te = _count(test, n, "test")
        tr = n - v - te
    elif test is None:
        tr = _count(train, n, "train")
        te = n - v - tr
    else:
        tr, te = _count(train, n, "train"), _count(test, n, "test")
    if tr < 1 or te < 0 or tr + v + te > n:
        raise PolypsegError(
            f"The sizes do not fit the data: train {tr} + val {v} + test {te} frames, out of {n}. Give sizes "
            "that add up to at most the number of frames, with at least one training frame."
        )
    asked = {"train": train, "val": val, "test": test}
    return (tr, v, te), {side: "rest" if size is None else size for side, size in asked.items()}


# ---------------------------------------------------------------------------------------------------
# Packing whole sequences


def _pack(sizes: dict[int, int], targets: list[float], rng: random.Random) -> list[list[int]]:
    """Assign groups (sequence -> frames) to bins of the given target sizes, whole groups only.

    Greedy in a random order, each group to the bin that still needs the most; the best of
    ``PACKING_TRIALS`` orders wins (first: no bin with a target left empty; then: the smallest total
    distance to the targets). Bins with target 0 get nothing.
    """
    keys = sorted(sizes)
    open_bins = [b for b, t in enumerate(targets) if t > 0]
    best: tuple[tuple[int, float], list[list[int]]] | None = None
    for _ in range(PACKING_TRIALS):
        order = keys[:]
        rng.shuffle(order)
        bins: list[list[int]] = [[] for _ in targets]
        totals = [0] * len(targets)
        for g in order:
            b = max(open_bins, key=lambda b: targets[b] - totals[b])
            bins[b].append(g)
            totals[b] += sizes[g]
        score = (
            sum(1 for b in open_bins if totals[b] == 0),
            sum(abs(totals[b] - targets[b]) for b in range(len(targets))),
        )
        if best is None or score < best[0]:
            best = (score, bins)
    assert best is not None  # PACKING_TRIALS >= 1
    if best[0][0]:
        raise PolypsegError(
            f"The {len(sizes)} sequences cannot be spread over the {len(open_bins)} sides or folds asked for "
            "with every one of them non-empty. Ask for fewer (e.g. --val 0, or a smaller --k), or use "
            "--strategy random."
        )
    return [sorted(b) for b in best[1]]


def _groups(ids: list[str], sequences: dict[str, int]) -> dict[int, list[str]]:
    groups: dict[int, list[str]] = defaultdict(list)
    for i in ids:
        groups[sequences[i]].append(i)
    return groups


def _need_sequences(index: DatasetIndex, strategy: str) -> dict[str, int]:
    if not index.has_sequences:
        raise PolypsegError(
            f"--strategy {strategy} keeps whole video sequences on one side, but {index.root} has no "
            "sequence information. Add a sequences.csv with columns 'id,sequence' (one row per frame) to the "
            "data folder, or use --strategy random, which splits frames and lets near-duplicate frames of "
            "one video land on both sides."
        )
    return {p.id: p.sequence for p in index.pairs}


def _sorted(ids) -> list[str]:
    return sorted(ids, key=id_sort_key)


# ---------------------------------------------------------------------------------------------------
# Strategies


def _random(ids: list[str], counts: tuple[int, int, int], rng: random.Random) -> dict[str, list[str]]:
    tr, v, te = counts
    order = ids[:]
    rng.shuffle(order)
    # test first, then val: for one seed, the test set does not change with the val and train sizes
    return {"test": order[:te], "val": order[te : te + v], "train": order[te + v : te + v + tr]}


def _sequence(
    ids: list[str], sequences: dict[str, int], counts: tuple[int, int, int], rng: random.Random
) -> dict[str, list[str]]:
    groups = _groups(ids, sequences)
    unused = len(ids) - sum(counts)
    bins = _pack({g: len(m) for g, m in groups.items()}, [*counts, unused], rng)
    return {side: [i for g in bins[b] for i in groups[g]] for b, side in enumerate(SIDES)}


def _kfold(ids: list[str], sequences: dict[str, int], k: int, rng: random.Random) -> list[list[str]]:
    groups = _groups(ids, sequences)
    if isinstance(k, bool) or not isinstance(k, int) or not 2 <= k <= len(groups):
        raise PolypsegError(
            f"--k {k} does not fit: k-fold needs a whole number from 2 to the number of sequences "
            f"({len(groups)})."
        )
    bins = _pack({g: len(m) for g, m in groups.items()}, [len(ids) / k] * k, rng)
    return [_sorted(i for g in b for i in groups[g]) for b in bins]


def resolve_fold(split: Split, fold: int) -> Split:
    """A k-fold split with fold ``fold`` as test, whole sequences of about ``params['val']`` of the frames
    from the other folds as validation (seeded by seed and fold), and the rest as train."""
    if split.folds is None or split.sequences is None:
        raise PolypsegError(f"A '{split.strategy}' split has no folds; --fold applies only to kfold splits.")
    k = len(split.folds)
    if isinstance(fold, bool) or not isinstance(fold, int) or not 0 <= fold < k:
        raise PolypsegError(f"--fold {fold} is out of range: this split has {k} folds, numbered 0 to {k - 1}.")
    others = [i for f, ids in enumerate(split.folds) if f != fold for i in ids]
    groups = _groups(others, split.sequences)
    v = _count(split.params.get("val", KFOLD_VAL_DEFAULT), split.params["frames"], "val")
    # A string seed is hashed with SHA-512 by random.Random: the same on every machine.
    rng = random.Random(f"{split.seed}/fold{fold}")
    bins = _pack({g: len(m) for g, m in groups.items()}, [v, len(others) - v], rng)
    sides = {
        "train": _sorted(i for g in bins[1] for i in groups[g]),
        "val": _sorted(i for g in bins[0] for i in groups[g]),
        "test": list(split.folds[fold]),
    }
    return Split(
        strategy=split.strategy, seed=split.seed, **sides, params=split.params,
        leak=_leak(sides, split.sequences), folds=split.folds, fold=fold, data=split.data,
        sequences=split.sequences,
    )


def make_split(
    index: DatasetIndex,
    strategy: str,
    train: Size = None,
    val: Size = None,
    test: Size = None,
    k: int = 5,
    seed: int = 0,
    fold: int | None = None,
) -> Split:
    """Split the frames of ``index``. Sizes are frame counts (whole numbers >= 1) or fractions (< 1);
    unset ones take the strategy's defaults. For ``kfold`` all folds are made; pass ``fold`` (or use
    ``resolve_fold``) to get that fold's train/val/test."""
    if strategy not in STRATEGIES:
        raise PolypsegError(f"Unknown split strategy '{strategy}'. Valid strategies: {', '.join(STRATEGIES)}.")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise PolypsegError(f"--seed {seed!r} is not a whole number.")
    if index.sources:
        return _split_per_folder(index, strategy, train, val, test, seed)
    ids = [p.id for p in index.pairs]
    n = len(ids)
    sequences = {p.id: p.sequence for p in index.pairs} if index.has_sequences else None
    params: dict[str, Any] = {"frames": n, "sequence_source": index.sequence_source}
    rng = random.Random(seed)
    folds = None

    if strategy in ("kfold", "pranet") and (train is not None or test is not None):
        what = "test is one fold" if strategy == "kfold" else "train and test are fixed by the PraNet list"
        raise PolypsegError(f"--strategy {strategy} takes no --train or --test ({what}); only --val applies.")
    if strategy == "random":
        counts, sizes = _counts(n, train, val, test, RANDOM_DEFAULTS)
        sides = _random(ids, counts, rng)
        params.update(sizes)
    elif strategy == "sequence":
        sequences = _need_sequences(index, strategy)
        counts, sizes = _counts(n, train, val, test, SEQUENCE_DEFAULTS)
        sides = _sequence(ids, sequences, counts, rng)
        params.update(sizes)
    elif strategy == "kfold":
        sequences = _need_sequences(index, strategy)
        val = KFOLD_VAL_DEFAULT if val is None else val
        if _count(val, n, "val") >= n:
            raise PolypsegError(f"--val {val} leaves no frames for training and test; give e.g. 0.1.")
        folds = _kfold(ids, sequences, k, rng)
        sides = {}
        params.update(k=k, val=val)
    else:  # pranet
        test_ids = [i for i in ids if index.pranet.get(i) == "test"]
        if not test_ids:
            raise PolypsegError(
                f"{index.root} has no PraNet test marks (a 'pranet_split' column in sequences.csv with "
                "'test' for the 62 PraNet test frames; known for CVC-ClinicDB). Use another --strategy."
            )
        rest = [i for i in ids if index.pranet.get(i) != "test"]
        v = _count(0 if val is None else val, n, "val")
        if v >= len(rest):
            raise PolypsegError(f"--val {val} leaves no training frames: only {len(rest)} frames are not test.")
        order = rest[:]
        rng.shuffle(order)
        sides = {"train": order[v:], "val": order[:v], "test": test_ids}
        params.update(val=0 if val is None else val)

    sides = {side: _sorted(sides.get(side, [])) for side in SIDES}
    split = Split(
        strategy=strategy, seed=seed, **sides, params=params,
        leak=_leak(sides if folds is None else {f"fold{i}": f for i, f in enumerate(folds)}, sequences),
        folds=folds, data=str(Path(index.root).resolve()), sequences=sequences,
    )
    return resolve_fold(split, fold) if fold is not None else split


def _folder_info(index: DatasetIndex) -> dict[str, Any]:
    sequences = {p.id: p.sequence for p in index.pairs} if index.has_sequences else None
    return {"data": str(Path(index.root).resolve()), "sequences": sequences}


def _split_per_folder(index: DatasetIndex, strategy: str, train: Size, val: Size, test: Size, seed: int) -> Split:
    """Several folders: each split on its own with the same strategy, sizes and seed, then joined."""
    if strategy == "kfold":
        raise PolypsegError(
            "k-fold splits take one data folder. Give one --data, or use --strategy sequence, random or pranet "
            "with several."
        )
    parts = {}
    for name, sub in index.sources.items():
        try:
            if sub.kind == "frames" and strategy not in ("random", "sequence"):
                # Polyp-free folders (no masks, no PraNet list) are split on their own: whole sequences
                # where they are known, else frames at random, with their own sizes (the strategy's sizes
                # are for the polyp frames).
                own = "sequence" if sub.has_sequences else "random"
                parts[name] = make_split(sub, own, val=NEGATIVES_DEFAULTS[0] if val is None else val,
                                         test=NEGATIVES_DEFAULTS[1], seed=seed)
            else:
                parts[name] = make_split(sub, strategy, train=train, val=val, test=test, seed=seed)
        except PolypsegError as exc:
            raise PolypsegError(f"Splitting the data folder '{name}' ({sub.root}): {exc}") from None
    sides = {side: [f"{name}/{i}" for name, s in parts.items() for i in getattr(s, side)] for side in SIDES}
    folders = {name: _folder_info(sub) for name, sub in index.sources.items()}
    params = {
        "frames": len(index.pairs),
        "per_folder": {name: {**s.params, "strategy": s.strategy} for name, s in parts.items()},
    }
    return Split(
        strategy=strategy, seed=seed, **sides, params=params, leak=_leak_per_folder(sides, folders),
        data=" + ".join(info["data"] for info in folders.values()), folders=folders,
    )


def with_index(split: Split, index: DatasetIndex) -> Split:
    """A split read from a file that carries no sequences (a user's CSV) with its leak counted from the
    sequences of ``index``; other splits are returned as they are."""
    if split.sequences is not None or split.folders:
        return split
    sides = {side: getattr(split, side) for side in SIDES}
    if index.sources:
        folders = {name: _folder_info(sub) for name, sub in index.sources.items()}
        return dataclasses.replace(split, folders=folders, leak=_leak_per_folder(sides, folders))
    if index.has_sequences:
        sequences = {p.id: p.sequence for p in index.pairs}
        return dataclasses.replace(split, sequences=sequences, leak=_leak(sides, sequences))
    return split


def split_pairs(split: Split, index: DatasetIndex) -> dict[str, list[Pair]]:
    """``{"train": [...], "val": [...], "test": [...]}`` as pairs of ``index``; every id must be there."""
    if split.folds is not None and split.fold is None:
        raise PolypsegError("This is a k-fold split: choose a fold (--fold) before using it.")
    by_id = {p.id: p for p in index.pairs}
    missing = [i for side in SIDES for i in getattr(split, side) if i not in by_id]
    if missing:
        raise PolypsegError(
            f"The split names {len(missing)} frames that are not in {index.root} (e.g. "
            f"{', '.join(missing[:5])}). It was made for {split.data}; use it with that data, or make a new "
            "split with `polypseg data split`."
        )
    return {side: [by_id[i] for i in getattr(split, side)] for side in SIDES}


# ---------------------------------------------------------------------------------------------------
# Files


def _load_csv(path: Path) -> Split:
    """A user's own split: a CSV with columns ``id,side`` (side train, val or test; other rows unused).
    With several data folders, ids are ``folder/id`` as ``polypseg data split`` writes them."""
    rows = read_csv_rows(path, {"id", "side"}, "the columns 'id,side' (side: train, val or test), one row per frame")

    sides: dict[str, list[str]] = {side: [] for side in SIDES}
    seen: set[str] = set()
    for line, row in enumerate(rows, start=2):
        raw_id, side = (row["id"] or "").strip(), (row["side"] or "").strip().lower()
        folder, _, frame = raw_id.rpartition("/")
        frame_id = f"{folder}/{normalize_id(frame)}" if folder else normalize_id(frame)
        if not frame_id or frame_id in seen:
            raise PolypsegError(f"{path}, line {line}: the frame '{raw_id}' is empty or listed twice.")
        seen.add(frame_id)
        if side in SIDES:
            sides[side].append(frame_id)
        elif side not in ("", "unused", "none"):
            raise PolypsegError(f"{path}, line {line}: the side '{side}' is not train, val or test.")
    if not sides["train"] and not sides["test"]:
        raise PolypsegError(f"The split file {path} puts no frame on the train or test side.")
    return Split(strategy=CUSTOM, seed=0, **sides, params={"frames": len(rows), "file": str(path)},
                 leak=_leak(sides, None), data=None)


def save_split(split: Split, path: str | Path) -> Path:
    """Write the split as JSON, atomically (a temporary file renamed into place)."""
    path = Path(path)
    if path.is_dir():
        raise PolypsegError(f"{path} is a folder; give a file name for the split, e.g. {path / 'split.json'}.")
    path.parent.mkdir(parents=True, exist_ok=True)
    # One key per line, each value compact: a diff of two split files shows which lists changed.
    text = "{\n" + ",\n".join(f" {json.dumps(k)}: {json.dumps(v)}" for k, v in split.to_dict().items()) + "\n}\n"
    atomic_write_text(path, text)
    return path


def _bad_file(path: Path, what: str) -> PolypsegError:
    return PolypsegError(
        f"{path} is not a valid polypseg split file: {what}. Make a new one with `polypseg data split DIR "
        "--strategy S -o FILE`."
    )


def _id_list(value: Any, path: Path, name: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(i, str) for i in value):
        raise _bad_file(path, f"'{name}' must be a list of frame ids (strings)")
    if len(set(value)) != len(value):
        raise _bad_file(path, f"'{name}' lists a frame more than once")
    return value


def load_split(path: str | Path, fold: int | None = None) -> Split:
    """Read and check a split file. For a k-fold file, ``fold`` (or the fold stored in the file) chooses
    the test fold, and train/val/test are resolved from it."""
    path = Path(path)
    if path.suffix.lower() == ".csv":
        if fold is not None:
            raise PolypsegError(f"--fold {fold} was given, but {path} is a list of frames without folds.")
        return _load_csv(path)
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise PolypsegError(
            f"The split file {path} does not exist. Make one with `polypseg data split DIR --strategy S -o FILE`."
        ) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _bad_file(path, f"it cannot be read as JSON ({exc})") from exc
    if not isinstance(raw, dict) or raw.get("format", FORMAT) != FORMAT or not ({"train", "test"} & raw.keys()):
        raise _bad_file(path, f"it needs \"train\" and \"test\" lists of frame ids (and \"format\": \"{FORMAT}\" if any)")
    if not isinstance(raw.get("strategy", CUSTOM), str):
        raise _bad_file(path, "'strategy' must be a name (any text, e.g. how the split was made)")
    raw.setdefault("strategy", CUSTOM)
    raw.setdefault("seed", 0)
    if isinstance(raw.get("seed"), bool) or not isinstance(raw.get("seed"), int):
        raise _bad_file(path, "'seed' must be a whole number")
    if not isinstance(raw.get("params", {}), dict):
        raise _bad_file(path, "'params' must be an object")
    sides = {side: _id_list(raw.get(side, []), path, side) for side in SIDES}
    if sum(map(len, sides.values())) != len(set().union(*sides.values())):
        raise _bad_file(path, "a frame is on more than one side")
    folds = raw.get("folds")
    if folds is not None:
        if not isinstance(folds, list) or len(folds) < 2:
            raise _bad_file(path, "'folds' must be a list of at least two lists of frame ids")
        folds = [_id_list(f, path, f"folds[{i}]") for i, f in enumerate(folds)]
        if sum(map(len, folds)) != len(set().union(*folds)):
            raise _bad_file(path, "a frame is in more than one fold")
    sequences = raw.get("sequences")
    if sequences is not None:
        if not isinstance(sequences, dict) or not all(
            isinstance(s, int) and not isinstance(s, bool) for s in sequences.values()
        ):
            raise _bad_file(path, "'sequences' must map frame ids to sequence numbers")
        listed = set().union(*sides.values(), *(folds or []))
        if not listed <= sequences.keys():
            raise _bad_file(path, "'sequences' leaves out frames that the split lists")
    if raw["strategy"] == "kfold" and (folds is None or sequences is None):
        raise _bad_file(path, "a kfold split needs 'folds' and 'sequences'")
    if raw["strategy"] != "kfold" and folds is not None:
        raise _bad_file(path, f"a '{raw['strategy']}' split has no 'folds'")

    folders = raw.get("folders")
    if folders is not None:
        if not isinstance(folders, dict) or not all(
            isinstance(v, dict) and isinstance(v.get("sequences"), (dict, type(None))) for v in folders.values()
        ):
            raise _bad_file(path, "'folders' must map folder names to {\"data\": ..., \"sequences\": {...} or null}")
        listed = set().union(*sides.values())
        if any(i.split("/", 1)[0] not in folders for i in listed):
            raise _bad_file(path, "with 'folders', every frame id must be 'folder/id' with a folder it names")
    leak = _leak_per_folder(sides, folders) if folders else _leak(sides, sequences)
    split = Split(
        strategy=raw["strategy"], seed=raw["seed"], **sides, params=raw.get("params", {}),
        leak=leak, folds=folds, fold=None, data=raw.get("data"), sequences=sequences, folders=folders,
    )
    if folds is None:
        if fold is not None:
            raise PolypsegError(
                f"--fold {fold} was given, but {path} is a '{split.strategy}' split without folds."
            )
        return split
    fold = raw.get("fold") if fold is None else fold
    if fold is None:
        raise PolypsegError(
            f"{path} is a {len(folds)}-fold split: choose the test fold with --fold (0 to {len(folds) - 1})."
        )
    split.params.setdefault("frames", sum(map(len, folds)))
    return resolve_fold(split, fold)


def resolve_split(cfg: Config, index: DatasetIndex) -> Split:
    """The split a run trains on: ``cfg.split`` (a file, its fold resolved) or one made here by
    ``cfg.split_strategy``, checked against ``index``."""
    if cfg.split:
        split = with_index(load_split(cfg.split, fold=cfg.fold), index)
    else:
        split = make_split(index, cfg.split_strategy, val=cfg.val_size, seed=cfg.seed)
        if split.folds is not None:  # kfold made on the fly: resolve the asked fold (default 0)
            split = resolve_fold(split, cfg.fold or 0)
    ids = {p.id for p in index.pairs}
    missing = sorted(set(split.train + split.val + split.test) - ids)
    if missing:
        raise PolypsegError(
            f"The split names {len(missing)} frame(s) that are not in {index.root} (e.g. {missing[:5]}). "
            "Make the split from this dataset with `polypseg data split`."
        )
    if not split.train:
        raise PolypsegError("The split has no training frames.")
    return split
