"""Splits: sizes, determinism, whole sequences per side, PraNet's list, the leak, split files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from polypseg.data import DatasetIndex, Pair, index_dataset
from polypseg.errors import PolypsegError
from polypseg.splits import load_split, make_split, resolve_fold, save_split, split_pairs

# The 62 PraNet test frames, copied from the data's SOURCE.md.
PRANET_TEST = """14 21 25 31 42 50 52 61 65 66 73 80 89 100 106 119 134 148 154 163 166 171 179 181 185 191 205 240
251 266 279 287 300 307 349 353 374 381 388 397 400 404 425 429 431 442 453 459 464 474 481 483 492 526 529 545
555 559 561 569 571 575""".split()


@pytest.fixture(scope="module")
def index(data_dir) -> DatasetIndex:
    return index_dataset(data_dir)  # lists files only; no pixels are read


def no_sequences(n: int = 20) -> DatasetIndex:
    pairs = [Pair(f"{i:03d}", Path(f"{i}.png"), Path(f"m{i}.png"), None) for i in range(1, n + 1)]
    return DatasetIndex(Path("x"), "images+masks", pairs, [], [], None)


def sequence_of(index: DatasetIndex) -> dict[str, int]:
    return {p.id: p.sequence for p in index.pairs}


def sides_of_sequences(index: DatasetIndex, sides: dict[str, list[str]]) -> dict[int, set[str]]:
    seq = sequence_of(index)
    where: dict[int, set[str]] = {}
    for side, ids in sides.items():
        for i in ids:
            where.setdefault(seq[i], set()).add(side)
    return where


def as_sides(split) -> dict[str, list[str]]:
    return {"train": split.train, "val": split.val, "test": split.test}


def test_random_default_is_267_345_and_leaks(index):
    split = make_split(index, "random")
    assert (len(split.train), len(split.val), len(split.test)) == (267, 0, 345)
    assert sorted(split.train + split.test) == sorted(p.id for p in index.pairs)
    assert split.leak["known"] and split.leak["train_test"] == 29 and split.leak["sequences_straddling"] == 29
    assert "LEAK: 29 of 29 sequences" in split.summary()


def test_random_sizes_fractions_counts_and_val_from_the_rest(index):
    split = make_split(index, "random", train=0.8, val=0.1, test=0.1)
    assert (len(split.train), len(split.val), len(split.test)) == (490, 61, 61)
    base, with_val = make_split(index, "random", seed=3), make_split(index, "random", val=50, seed=3)
    assert with_val.test == base.test and len(with_val.val) == 50 and len(with_val.train) == 217
    assert not set(with_val.val) & set(with_val.train)
    small = make_split(index, "random", train=100, test=100)
    assert len(small.train) == len(small.test) == 100 and "unused       412" in small.summary()


@pytest.mark.parametrize(
    "sizes, message",
    [
        (dict(train=400, test=300), "train 400 \\+ val 0 \\+ test 300 frames, out of 612"),
        (dict(train=2.5), "--train 2.5 is neither a whole number"),
        (dict(val=-1), "--val -1 is not a size"),
        (dict(test="half"), "--test 'half' is not a size"),
        (dict(test=612), "train 0 \\+ val 0 \\+ test 612"),
    ],
)
def test_bad_sizes(index, sizes, message):
    with pytest.raises(PolypsegError, match=message):
        make_split(index, "random", **sizes)


@pytest.mark.parametrize("strategy", ["random", "sequence", "kfold", "pranet"])
def test_same_seed_same_split_other_seed_other_split(index, strategy):
    val = 0.1 if strategy == "pranet" else None  # pranet's randomness is only in val
    a, b = make_split(index, strategy, val=val, seed=7), make_split(index, strategy, val=val, seed=7)
    c = make_split(index, strategy, val=val, seed=8)
    assert a.to_dict() == b.to_dict()
    assert (a.train, a.val, a.test, a.folds) != (c.train, c.val, c.test, c.folds)


def test_seed_zero_is_pinned(index):
    # Guards against an algorithm change that would silently move frames between sides of old splits.
    assert make_split(index, "random").test[:6] == ["003", "004", "005", "006", "008", "009"]
    assert make_split(index, "sequence").test[:3] == ["127", "128", "129"]
    assert make_split(index, "kfold").folds[0][:3] == ["068", "069", "070"]


def test_sequence_split_keeps_sequences_whole_near_the_asked_sizes(index):
    split = make_split(index, "sequence")
    where = sides_of_sequences(index, as_sides(split))
    assert len(where) == 29 and all(len(sides) == 1 for sides in where.values())
    assert split.leak == {"known": True, "sequences_straddling": 0, "train_test": 0, "sequences": []}
    largest = 26  # frames in the longest sequence: the most a whole-sequence split can miss by
    for ids, share in ((split.train, 0.4), (split.val, 0.1), (split.test, 0.5)):
        assert abs(len(ids) - share * 612) <= largest
    assert len(split.train) + len(split.val) + len(split.test) == 612
    assert "Leak: none" in split.summary()


def test_grouped_strategies_need_sequences():
    for strategy in ("sequence", "kfold"):
        with pytest.raises(PolypsegError, match="no sequence information.*sequences.csv.*--strategy random"):
            make_split(no_sequences(), strategy)
    split = make_split(no_sequences(), "random")
    assert split.leak["known"] is False and "Leak: UNKNOWN" in split.summary()
    assert (len(split.train), len(split.test)) == (9, 11)  # 267/612 and 345/612 of 20 frames


def test_kfold_folds_cover_every_frame_once_and_keep_sequences_whole(index):
    split = make_split(index, "kfold", k=5)
    assert split.train == split.val == split.test == [] and split.fold is None
    everything = [i for fold in split.folds for i in fold]
    assert sorted(everything) == sorted(p.id for p in index.pairs)
    where = sides_of_sequences(index, {str(f): ids for f, ids in enumerate(split.folds)})
    assert all(len(folds) == 1 for folds in where.values())
    sizes = [len(f) for f in split.folds]
    assert max(sizes) - min(sizes) <= 26
    assert split.leak["train_test"] == 0


def test_kfold_resolving_a_fold(index):
    split = make_split(index, "kfold", k=5, val=0.1)
    for fold in range(5):
        resolved = resolve_fold(split, fold)
        assert resolved.test == split.folds[fold] and resolved.fold == fold
        assert sorted(resolved.train + resolved.val + resolved.test) == sorted(p.id for p in index.pairs)
        assert abs(len(resolved.val) - 61) <= 26 and resolved.val
        assert all(len(s) == 1 for s in sides_of_sequences(index, as_sides(resolved)).values())
        assert resolved.leak["sequences_straddling"] == 0
    assert make_split(index, "kfold", fold=2).to_dict() == resolve_fold(split, 2).to_dict()
    with pytest.raises(PolypsegError, match="--fold 5 is out of range.*numbered 0 to 4"):
        resolve_fold(split, 5)
    with pytest.raises(PolypsegError, match="--k 30 does not fit.*\\(29\\)"):
        make_split(index, "kfold", k=30)
    with pytest.raises(PolypsegError, match="takes no --train or --test"):
        make_split(index, "kfold", test=0.2)


def test_pranet_is_the_published_62_and_leaks(index):
    split = make_split(index, "pranet")
    assert split.test == [f"{int(n):03d}" for n in PRANET_TEST]
    assert len(split.train) == 550 and split.val == []
    assert split.leak["train_test"] == 26
    with_val = make_split(index, "pranet", val=55)
    assert with_val.test == split.test and len(with_val.val) == 55 and len(with_val.train) == 495
    with pytest.raises(PolypsegError, match="no PraNet test marks"):
        make_split(no_sequences(), "pranet")
    with pytest.raises(PolypsegError, match="takes no --train or --test"):
        make_split(index, "pranet", train=500)


def test_unknown_strategy_lists_valid_ones(index):
    with pytest.raises(PolypsegError, match="Unknown split strategy 'video'.*: random, sequence, kfold, pranet"):
        make_split(index, "video")


def test_save_load_round_trip(index, tmp_path):
    split = make_split(index, "sequence", seed=4)
    path = save_split(split, tmp_path / "sub" / "split.json")
    assert [p.name for p in path.parent.iterdir()] == ["split.json"]  # no temporary file left behind
    raw = json.loads(path.read_text())
    assert raw["data"] == str(index.root.resolve()) and raw["strategy"] == "sequence" and raw["seed"] == 4
    assert raw["leak"]["sequences_straddling"] == 0
    assert load_split(path).to_dict() == split.to_dict()

    kfold = make_split(index, "kfold", k=4, seed=1)
    save_split(kfold, tmp_path / "kfold.json")
    assert load_split(tmp_path / "kfold.json", fold=3).to_dict() == resolve_fold(kfold, 3).to_dict()
    save_split(resolve_fold(kfold, 1), tmp_path / "fold1.json")  # a run's split.json keeps its fold
    assert load_split(tmp_path / "fold1.json").fold == 1
    assert load_split(tmp_path / "fold1.json", fold=0).test == kfold.folds[0]


def edit(path: Path, **changes) -> Path:
    raw = json.loads(path.read_text())
    raw.update(changes)
    path.write_text(json.dumps(raw))
    return path


def test_bad_split_files(index, tmp_path):
    good = save_split(make_split(index, "random"), tmp_path / "good.json")
    kfold = save_split(make_split(index, "kfold"), tmp_path / "kfold.json")
    with pytest.raises(PolypsegError, match="does not exist"):
        load_split(tmp_path / "missing.json")
    (tmp_path / "text.json").write_text("{not json")
    with pytest.raises(PolypsegError, match="text.json is not a valid polypseg split file: it cannot be read as"):
        load_split(tmp_path / "text.json")
    with pytest.raises(PolypsegError, match='needs "train" and "test" lists'):
        load_split(edit(tmp_path / "good.json", format="other"))
    good = save_split(make_split(index, "random"), tmp_path / "good.json")
    raw = json.loads(good.read_text())
    with pytest.raises(PolypsegError, match="a frame is on more than one side"):
        load_split(edit(good, val=raw["test"][:1]))
    with pytest.raises(PolypsegError, match="'train' must be a list of frame ids"):
        load_split(edit(good, train=[1, 2]))
    # A hand-made split may name any strategy: it is a label, not an instruction.
    good = save_split(make_split(index, "random"), tmp_path / "good.json")
    assert load_split(edit(good, strategy="hospital list")).strategy == "hospital list"
    good = save_split(make_split(index, "random"), tmp_path / "good.json")
    with pytest.raises(PolypsegError, match="--fold 1 was given, but .* is a 'random' split without folds"):
        load_split(good, fold=1)
    with pytest.raises(PolypsegError, match="5-fold split: choose the test fold with --fold \\(0 to 4\\)"):
        load_split(kfold)
    with pytest.raises(PolypsegError, match="out of range"):
        load_split(kfold, fold=-1)


def test_split_pairs_checks_ids_against_the_data(index):
    split = make_split(index, "random", seed=2)
    sides = split_pairs(split, index)
    assert [p.id for p in sides["test"]] == split.test
    small = DatasetIndex(index.root, index.layout, index.pairs[:10], [], [], index.sequence_source)
    with pytest.raises(PolypsegError, match="frames that are not in .*make a new split"):
        split_pairs(split, small)
    with pytest.raises(PolypsegError, match="choose a fold"):
        split_pairs(make_split(index, "kfold"), index)
