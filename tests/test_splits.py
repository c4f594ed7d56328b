"""segtut.datasets.splits: duplicate images never straddle two splits; splits are seeded."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segtut.datasets.splits import group_duplicates, pixel_hash, split_without_leaks
from segtut.errors import DataError


def write(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def test_group_duplicates_by_decoded_pixels(tmp_path):
    rng = np.random.default_rng(0)
    paths = [write(tmp_path / f"{i}.png", rng.integers(0, 256, (6, 8, 3), dtype=np.uint8))
             for i in range(4)]
    shutil.copyfile(paths[1], tmp_path / "copy.png")  # the same bytes
    write(tmp_path / "resaved.bmp", np.asarray(Image.open(paths[2])))  # the same pixels
    grey = rng.integers(0, 256, (6, 8), dtype=np.uint8)
    write(tmp_path / "grey.png", grey)
    write(tmp_path / "grey_rgb.png", np.repeat(grey[..., None], 3, axis=2))  # same picture
    everything = paths + [tmp_path / n for n in ("copy.png", "resaved.bmp", "grey.png",
                                                 "grey_rgb.png")]
    groups = group_duplicates(everything)
    assert groups == [[paths[1], tmp_path / "copy.png"], [paths[2], tmp_path / "resaved.bmp"],
                      [tmp_path / "grey.png", tmp_path / "grey_rgb.png"]]
    assert pixel_hash(paths[0]) != pixel_hash(paths[3])


def test_unreadable_file_is_a_data_error(tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"nope")
    with pytest.raises(DataError, match="bad.png"):
        group_duplicates([bad])


def _assert_partition(splits, n):
    indices = sorted(i for part in splits.values() for i in part)
    assert indices == list(range(n))


@pytest.mark.parametrize("seed", range(20))
def test_duplicate_groups_never_straddle_splits(seed):
    items = [f"img{i:03d}" for i in range(60)]
    groups = [["img001", "img017"], ["img005", "img040", "img041"], ["img059", "img000"]]
    splits = split_without_leaks(items, groups, seed=seed)
    _assert_partition(splits, len(items))
    where = {items[i]: name for name, part in splits.items() for i in part}
    for group in groups:
        assert len({where[item] for item in group}) == 1, (seed, group, where)


def test_keys_keep_equal_keys_together():
    items = list(range(30))
    keys = [i // 3 for i in items]  # e.g. three frames of one video
    splits = split_without_leaks(items, keys=keys, seed=3)
    _assert_partition(splits, 30)
    for name, part in splits.items():
        for i in part:
            assert all(j in part for j in items if keys[j] == keys[i])


def test_split_is_deterministic_and_seeded():
    items = [f"f{i}" for i in range(100)]
    first = split_without_leaks(items, [["f1", "f2"]], seed=7)
    assert first == split_without_leaks(items, [["f1", "f2"]], seed=7)
    assert first != split_without_leaks(items, [["f1", "f2"]], seed=8)
    assert list(first) == ["train", "val", "test"]


def test_fractions_are_respected_approximately():
    items = list(range(200))
    groups = [[i, i + 1] for i in range(0, 40, 2)]  # 20 duplicate pairs
    splits = split_without_leaks(items, groups, fractions=(0.6, 0.2, 0.2), seed=1)
    sizes = {name: len(part) for name, part in splits.items()}
    assert abs(sizes["train"] - 120) <= 2 and abs(sizes["val"] - 40) <= 2
    assert sum(sizes.values()) == 200


def test_overlapping_groups_merge():
    items = list("abcdef")
    splits = split_without_leaks(items, [["a", "b"], ["b", "c"]], seed=0,
                                 fractions=(0.5, 0.5), names=("train", "test"))
    where = {items[i]: name for name, part in splits.items() for i in part}
    assert where["a"] == where["b"] == where["c"]


@pytest.mark.parametrize("kwargs, match", [
    ({"fractions": (0.5, 0.6, 0.1)}, "sum to 1"),
    ({"fractions": (0.5, 0.5)}, "2 fractions"),
    ({"keys": [1, 2]}, "one key per item"),
    ({"groups": [["zzz"]]}, "not in items"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        split_without_leaks(["a", "b", "c"], **kwargs)
