"""segtut.datasets.describe.describe_dataset finds each planted problem and names the files."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segtut.datasets.describe import describe_dataset, same_aspect

H, W = 24, 32


def write(path: Path, array: np.ndarray, **save) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, **save)
    return path


def photo(seed: int, h=H, w=W) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def ids(h=H, w=W) -> np.ndarray:
    mask = np.zeros((h, w), np.uint8)
    mask[h // 3:, w // 4:] = 1
    mask[: h // 4, : w // 3] = 2
    return mask


def disk(h=H, w=W) -> np.ndarray:
    y, x = np.mgrid[:h, :w]
    return ((y - h / 2 + 0.5) ** 2 + (x - w / 2 + 0.5) ** 2 < (0.37 * h) ** 2)


@pytest.fixture
def clean(tmp_path):
    images, masks = tmp_path / "images", tmp_path / "masks"
    for i in range(4):
        write(images / f"{i:03d}.png", photo(i))
        write(masks / f"{i:03d}.png", ids())
    return images, masks


def text(report) -> str:
    return "\n".join(report.problems)


def test_clean_folder_has_no_problems(clean):
    report = describe_dataset(*clean, num_classes=3, class_names=["sky", "road", "car"])
    assert report.problems == [] and report.pairs == 4
    assert report.image_sizes == {(H, W): 4} and report.mask_sizes == {(H, W): 4}
    assert report.mask_formats == {"PNG": 4} and report.mask_modes == {"L": 4}
    assert sorted(report.mask_values) == [0, 1, 2]
    assert set(report.class_frequencies) == {"sky", "road", "car"}
    assert sum(report.class_frequencies.values()) == pytest.approx(1.0)
    summary = str(report)
    assert "pairs              4" in summary and "No problems found." in summary
    assert report.summary() == summary
    frame = report.to_frame()
    assert len(frame) == 4 and list(frame["name"]) == ["000", "001", "002", "003"]


def test_duplicates_by_bytes_and_by_pixels(clean):
    images, masks = clean
    shutil.copyfile(images / "001.png", images / "copy.png")  # byte-identical
    write(masks / "copy.png", ids())
    pixels = np.asarray(Image.open(images / "002.png"))
    write(images / "resaved.bmp", pixels)  # other bytes, same pixels
    write(masks / "resaved.png", ids())
    report = describe_dataset(images, masks)
    assert report.duplicate_files == [["001.png", "copy.png"]]
    assert report.duplicate_images == [["001.png", "copy.png"], ["002.png", "resaved.bmp"]]
    problems = text(report)
    assert "001.png, copy.png" in problems and "002.png, resaved.bmp" in problems
    assert "byte-identical" in problems and "split_without_leaks" in problems


def test_size_mismatch_with_and_without_the_same_aspect(clean):
    images, masks = clean
    write(masks / "001.png", ids(12, 16))  # half size: a scaled copy
    write(masks / "002.png", ids(24, 24))  # square: not a copy of a 3:4 photo
    report = describe_dataset(images, masks)
    found = {m.name: m for m in report.size_mismatches}
    assert set(found) == {"001", "002"}
    assert found["001"].same_aspect and not found["002"].same_aspect
    assert found["001"].image_size == (H, W) and found["001"].mask_size == (12, 16)
    problems = text(report)
    assert "001: image 24x32, mask 12x16" in problems and "resize_masks=True" in problems
    assert "002: image 24x32, mask 24x24" in problems and "AND aspect ratio" in problems


def test_jpeg_masks_with_noise_that_look_binary(tmp_path):
    images, masks = tmp_path / "images", tmp_path / "masks"
    for i in range(3):
        write(images / f"h{i}.jpg", photo(i))
        write(masks / f"h{i}.jpg", disk().astype(np.uint8) * 255, quality=60)
    report = describe_dataset(images, masks, num_classes=2, class_names=["bg", "horse"])
    assert report.jpeg_masks == ["h0.jpg", "h1.jpg", "h2.jpg"]
    assert report.mask_formats == {"JPEG": 3}
    assert report.looks_binary and report.jpeg_noise_levels > 2
    assert f"JPEG noise: {report.jpeg_noise_levels} grey levels" in report.flags
    assert set(report.class_frequencies) == {"bg", "horse"}
    assert report.class_frequencies["horse"] == pytest.approx(disk().mean(), abs=0.05)
    assert report.out_of_range == {}  # reported as noisy binary, not value by value
    problems = text(report)
    assert "h0.jpg" in problems and "jpeg_masks='threshold'" in problems
    assert "grey levels" in problems


def test_zero_255_masks(clean):
    images, masks = clean
    write(masks / "002.png", disk().astype(np.uint8) * 255)
    report = describe_dataset(images, masks, num_classes=3)
    assert report.binary_0_255_masks == ["002.png"]
    assert "looks like 0/255 binary" in report.flags
    # ids 0, 1, 2 plus 255 in PNG masks are not JPEG noise, and the folder is not binary
    assert report.jpeg_noise_levels == 0 and not report.looks_binary
    problems = text(report)
    assert "002.png" in problems and "Divide them by 255" in problems
    assert "binary=True" in problems


def test_orphans_and_name_clashes(clean):
    images, masks = clean
    write(masks / "orphan.png", ids())
    write(images / "lonely.png", photo(9))
    write(images / "003.jpg", photo(3))  # 003.png and 003.jpg: one name, two files
    report = describe_dataset(images, masks)
    assert report.masks_without_images == ["orphan.png"]
    assert report.images_without_masks == ["lonely.png"]
    assert report.name_clashes == [["003.jpg", "003.png"]]
    problems = text(report)
    assert "orphan.png" in problems and "lonely.png" in problems
    assert "003.jpg, 003.png" in problems


def test_corrupt_files_are_collected_not_raised(clean):
    images, masks = clean
    (images / "001.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    data = (masks / "002.png").read_bytes()
    (masks / "002.png").write_bytes(data[: len(data) // 2])  # truncated
    report = describe_dataset(images, masks)
    names = [name for name, _ in report.unreadable]
    assert any("001.png" in n for n in names) and any("002.png" in n for n in names)
    problems = text(report)
    assert "Cannot read image" in problems and "001.png" in problems and "002.png" in problems
    assert "unreadable files   2" in str(report)


def test_colour_masks_and_out_of_range_values(clean):
    images, masks = clean
    palette = np.array([(0, 0, 0), (255, 0, 0), (0, 0, 255)], np.uint8)
    write(masks / "001.png", palette[ids()])
    bad = ids()
    bad[0, 0] = 7
    write(masks / "002.png", bad)
    report = describe_dataset(images, masks, num_classes=3)
    assert report.colour_masks == ["001.png"] and "RGB colour mask" in report.flags
    assert report.out_of_range == {"002.png": [7]}
    problems = text(report)
    assert "001.png" in problems and "palette=" in problems
    assert "002.png" in problems and "[7]" in problems


def test_missing_folder_and_max_files(clean, tmp_path):
    report = describe_dataset(clean[0], tmp_path / "nowhere")
    assert any("nowhere" in p for p in report.problems)
    limited = describe_dataset(*clean, max_files=2)
    assert limited.files_checked == 2 and len(limited.files) == 2


def test_same_aspect():
    assert same_aspect((590, 800), (232, 315))  # horse001: a scaled copy, rounded
    assert same_aspect((220, 198), (251, 226))
    assert not same_aspect((24, 32), (24, 24))


def test_fast_enough(tmp_path):
    images, masks = tmp_path / "images", tmp_path / "masks"
    for i in range(40):
        write(images / f"{i:03d}.jpg", photo(i, 200, 300))
        write(masks / f"{i:03d}.jpg", disk(150, 225).astype(np.uint8) * 255)
    start = time.perf_counter()
    report = describe_dataset(images, masks)
    assert time.perf_counter() - start < 2.0  # 328 such pairs take a few seconds
    assert report.pairs == 40 and len(report.size_mismatches) == 40
