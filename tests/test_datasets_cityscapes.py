"""Cityscapes: the label table, colour labels to ids, the pix2pix pairs, the official layout and
the smoke fallback, on small files written in the real layouts."""

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import tv_tensors

from segtut.datasets.cityscapes import (
    CATEGORY_NAMES, CATEGORY_PALETTE, LABEL_ID_TO_CATEGORY, LABEL_ID_TO_TRAIN_ID, LABELS,
    PAIR_COLOURS, PAIR_LABEL_IDS, SYNTHETIC_PAIRS_MARKER, TARGETS, TRAIN_CLASS_NAMES,
    TRAIN_PALETTE, CityscapesNotFound, CityscapesOfficial, CityscapesPairs,
    cityscapes_pairs_for_profile, cityscapes_pairs_root, cityscapes_root, target_table)
from segtut.datasets.colours import ambiguous_share, colours_to_ids, red_channel_ids
from segtut.errors import DataError

COLOUR = {label.name: label.colour for label in LABELS}
TRAIN_ID = {name: i for i, name in enumerate(TRAIN_CLASS_NAMES)}

# A 64x64 label of six bands (rows): building and sky share red 70, car and truck red 0.
BANDS = ("sky", "building", "vegetation", "car", "road", "unlabeled")


def band_label(size=64):
    label = np.zeros((size, size, 3), np.uint8)
    rows = size // len(BANDS)
    for i, name in enumerate(BANDS):
        label[i * rows:(i + 1) * rows] = COLOUR[name]
    label[len(BANDS) * rows:] = COLOUR[BANDS[-1]]
    return label


def band_truth(size=64, interior=3):
    """Expected trainIds per row, and a row mask that skips rows next to band edges."""
    rows = size // len(BANDS)
    truth = np.full(size, 255, np.int64)
    keep = np.zeros(size, bool)
    for i, name in enumerate(BANDS):
        truth[i * rows:(i + 1) * rows] = LABEL_ID_TO_TRAIN_ID[
            next(label.id for label in LABELS if label.name == name)]
        keep[i * rows + interior:(i + 1) * rows - interior] = True
    truth[len(BANDS) * rows:] = 255
    return truth, keep


def write_pair(path, label, quality=75, seed=0):
    """A pix2pix pair: a photo-like gradient with noise left, the colour label right, as JPEG."""
    rng = np.random.default_rng(seed)
    height, width, _ = label.shape
    ramp = np.linspace(40, 200, width)[None, :, None] + np.zeros((height, 1, 3))
    photo = np.clip(ramp + rng.normal(0, 10, label.shape), 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.concatenate([photo, label], axis=1)).save(path, quality=quality)


@pytest.fixture
def pairs_dir(tmp_path):
    """``<tmp>/cityscapes_pairs/{train,val}`` with numbered pairs (not in text order)."""
    root = tmp_path / "cityscapes_pairs"
    for split, numbers in (("train", (1, 7, 13, 100, 2)), ("val", (1, 6))):
        for n in numbers:
            write_pair(root / split / f"{n}.jpg", band_label(), seed=n)
    return root


# The label table -----------------------------------------------------------------------------

def test_label_table_is_the_official_one():
    ids = [label.id for label in LABELS if label.id >= 0]
    assert ids == list(range(34)) and LABELS[-1].name == "license plate"
    assert len(TRAIN_CLASS_NAMES) == 19 and TRAIN_CLASS_NAMES[0] == "road"
    assert TRAIN_CLASS_NAMES[-1] == "bicycle" and TRAIN_PALETTE[-1] == (119, 11, 32)
    assert TRAIN_PALETTE[TRAIN_ID["sky"]] == (70, 130, 180)
    assert LABEL_ID_TO_TRAIN_ID.dtype == np.uint8 and LABEL_ID_TO_TRAIN_ID.shape == (256,)
    assert LABEL_ID_TO_TRAIN_ID[7] == 0 and LABEL_ID_TO_TRAIN_ID[33] == 18
    assert LABEL_ID_TO_TRAIN_ID[29] == 255 and LABEL_ID_TO_TRAIN_ID[34] == 255  # caravan, unknown
    assert LABEL_ID_TO_CATEGORY[0] == 255 and LABEL_ID_TO_CATEGORY[7] == 0  # void, flat
    assert LABEL_ID_TO_CATEGORY[26] == CATEGORY_NAMES.index("vehicle")
    assert LABEL_ID_TO_CATEGORY[18] == CATEGORY_NAMES.index("object")
    assert len(CATEGORY_NAMES) == len(CATEGORY_PALETTE) == 7
    # Shared colours: black -> unlabeled (0), grey -> pole (17), not polegroup (18).
    assert len(PAIR_COLOURS) == len(set(PAIR_COLOURS)) == 29  # 34 - 4 more blacks - polegroup
    assert PAIR_LABEL_IDS[PAIR_COLOURS.index((0, 0, 0))] == 0
    assert PAIR_LABEL_IDS[PAIR_COLOURS.index((153, 153, 153))] == 17


def test_targets_name_the_valid_choices():
    assert TARGETS == ("categories", "train_ids")
    with pytest.raises(ValueError, match="categories, train_ids"):
        target_table("classes")


# Colours to ids -----------------------------------------------------------------------------

def test_colours_to_ids_nearest_colour_distance_and_ties():
    rgb = np.array([[[0, 0, 0], [10, 0, 0], [60, 60, 60]],
                    [[200, 200, 200], [50, 50, 50], [100, 100, 100]]], np.uint8)
    ids, distance = colours_to_ids(rgb, [(0, 0, 0), (100, 100, 100)], [5, 9])
    assert ids.dtype == np.int64 and distance.dtype == np.float32 and ids.shape == (2, 3)
    assert ids.tolist() == [[5, 5, 9], [9, 5, 9]]  # (50,50,50) is halfway: the first colour
    assert distance[0, 1] == pytest.approx(10.0)
    assert distance[1, 0] == pytest.approx(np.sqrt(3) * 100)
    far, _ = colours_to_ids(rgb, [(0, 0, 0), (100, 100, 100)], [5, 9], max_distance=50)
    assert far.tolist() == [[5, 5, 255], [255, 255, 9]]
    assert ambiguous_share(distance, 30.0) == pytest.approx(3 / 6)
    with pytest.raises(ValueError, match="one id per palette colour"):
        colours_to_ids(rgb, [(0, 0, 0)], [1, 2])
    with pytest.raises(ValueError, match="uint8"):
        colours_to_ids(rgb.astype(np.float32), [(0, 0, 0)])


def test_nearest_colour_survives_jpeg_but_the_red_channel_shortcut_does_not(tmp_path):
    write_pair(tmp_path / "pairs" / "train" / "1.jpg", band_label(), quality=60)
    pairs = CityscapesPairs(tmp_path / "pairs", "train", target="train_ids")
    _, label = pairs.halves(0)
    assert not np.array_equal(label, band_label())  # the JPEG really changed the colours
    truth, keep = band_truth()
    # The first and last columns of the label half take colour from the photo next to it (JPEG
    # blurs colour over 16x16 blocks): the real pairs have this seam too.
    keep = keep[:, None] & (np.arange(64) >= 4)[None, :] & (np.arange(64) < 60)[None, :]
    expected = np.repeat(truth[:, None], 64, axis=1)[keep]
    _, mask = pairs[0]
    assert (mask.numpy()[keep] == expected).all()  # every interior pixel right
    shortcut = LABEL_ID_TO_TRAIN_ID[red_channel_ids(label, PAIR_COLOURS, PAIR_LABEL_IDS)]
    # Sky and building share red 70 (and car is red 0 like truck): a sixth of the picture, the
    # sky band, comes out as building, and more pixels flip on JPEG noise.
    wrong = (shortcut[keep] != expected).mean()
    assert wrong > 0.15
    assert (shortcut[:10][keep[:10]] == TRAIN_ID["building"]).all()  # the sky band


# CityscapesPairs ----------------------------------------------------------------------------

def test_pairs_contract_targets_void_sort_limit_cache(pairs_dir):
    train = CityscapesPairs(pairs_dir, "train", target="train_ids")
    assert [p.name for p in train.images] == ["1.jpg", "2.jpg", "7.jpg", "13.jpg", "100.jpg"]
    assert len(train) == 5 and train.num_classes == 19 and train.ignore_index == 255
    assert train.class_names == TRAIN_CLASS_NAMES and train.palette == TRAIN_PALETTE
    assert not train.is_synthetic
    image, mask = train[0]
    assert isinstance(image, tv_tensors.Image) and image.dtype == torch.uint8
    assert image.shape == (3, 64, 64)
    assert isinstance(mask, tv_tensors.Mask) and mask.dtype == torch.int64
    assert mask.shape == (64, 64)
    assert mask[-1, 32] == 255  # the black "unlabeled" band: void -> ignored
    assert mask[35, 32] == TRAIN_ID["car"]

    categories = CityscapesPairs(pairs_dir, "val", limit=1, cache=True)
    assert categories.target == "categories" and categories.num_classes == 7
    assert len(categories) == 1 and categories.class_names == CATEGORY_NAMES
    _, cat_mask = categories[0]
    assert cat_mask[35, 32] == CATEGORY_NAMES.index("vehicle")
    assert cat_mask[2, 32] == CATEGORY_NAMES.index("sky")
    assert cat_mask[-1, 32] == 255
    assert categories.load(0) is categories.load(0)  # cached
    assert 0.0 <= categories.ambiguous_share(0) < 0.2

    flipped = CityscapesPairs(pairs_dir, "val", transform=lambda i, m: (i.flip(-1), m + 0))
    assert flipped[0][0].shape == (3, 64, 64)
    with pytest.raises(ValueError, match="train, val"):
        CityscapesPairs(pairs_dir, "test")
    with pytest.raises(ValueError, match="categories, train_ids"):
        CityscapesPairs(pairs_dir, "train", target="labels")


def test_max_distance_ignores_far_label_pixels(tmp_path):
    label = band_label()
    label[0:4, 0:4] = (200, 120, 20)  # an orange patch, far from every Cityscapes colour
    write_pair(tmp_path / "pairs" / "train" / "1.jpg", label, quality=95)
    plain = CityscapesPairs(tmp_path / "pairs", target="train_ids")
    strict = CityscapesPairs(tmp_path / "pairs", target="train_ids", max_distance=30)
    assert plain[0][1][1, 1] != 255 and strict[0][1][1, 1] == 255
    assert strict[0][1][3 * 64 // 6 + 5, 30] == TRAIN_ID["car"]


def test_a_file_that_is_not_a_pair_is_named(tmp_path):
    folder = tmp_path / "pairs" / "train"
    folder.mkdir(parents=True)
    Image.new("RGB", (300, 256)).save(folder / "5.jpg")
    pairs = CityscapesPairs(tmp_path / "pairs")
    with pytest.raises(DataError, match=r"5\.jpg is 300x256.*not a photo\+label pair"):
        pairs[0]


def test_missing_pairs_say_where_to_get_them(tmp_path):
    with pytest.raises(CityscapesNotFound, match="pix2pix.*cityscapes_data") as error:
        CityscapesPairs(tmp_path / "cityscapes_pairs", "train")
    assert "efrosgans.eecs.berkeley.edu/pix2pix/datasets" in str(error.value)
    with pytest.raises(CityscapesNotFound, match=str(tmp_path / "cityscapes_pairs" / "train")):
        cityscapes_pairs_root(tmp_path)
    (tmp_path / "cityscapes_pairs" / "train").mkdir(parents=True)
    (tmp_path / "cityscapes_pairs" / "val").mkdir()
    with pytest.raises(DataError, match="holds no images"):
        cityscapes_pairs_root(tmp_path)


# Profiles -----------------------------------------------------------------------------------

def test_smoke_profile_writes_synthetic_pairs_and_says_so(tmp_path):
    lines = []
    data = cityscapes_pairs_for_profile("smoke", tmp_path / "empty", scratch=tmp_path / "s",
                                        log=lines.append)
    assert data.synthetic and "SYNTHETIC" in data.source
    assert any("SYNTHETIC DATA" in line for line in lines)
    assert any("cityscapes.tar.gz" in line for line in lines)
    assert (data.root / SYNTHETIC_PAIRS_MARKER).exists()
    train = CityscapesPairs(data.root, "train", target="train_ids")
    val = CityscapesPairs(data.root, "val")
    assert (len(train), len(val)) == (8, 4) and train.is_synthetic
    assert [p.name for p in train.images[:3]] == ["1.jpg", "7.jpg", "13.jpg"]
    with Image.open(train.images[0]) as pil:
        assert pil.size == (512, 256) and pil.format == "JPEG"
    image, mask = train[0]
    assert image.shape == (3, 256, 256)
    found = set(torch.unique(mask).tolist())
    assert {TRAIN_ID[name] for name in ("road", "building", "sky", "car")} <= found
    assert 255 in found  # the void strip


def test_cpu_profile_with_missing_data_is_an_error(tmp_path):
    with pytest.raises(CityscapesNotFound, match="cityscapes_pairs"):
        cityscapes_pairs_for_profile("cpu", tmp_path, log=lambda line: None)
    with pytest.raises(ValueError, match="smoke, cpu, gpu"):
        cityscapes_pairs_for_profile("fast", tmp_path)


def test_profile_finds_real_pairs(pairs_dir):
    data = cityscapes_pairs_for_profile("smoke", pairs_dir.parent, train_images=3,
                                        log=lambda line: pytest.fail(line))
    assert data.root == pairs_dir and not data.synthetic
    assert "train 3, val 2" in data.source
    assert cityscapes_pairs_for_profile("gpu", pairs_dir.parent).root == pairs_dir


# CityscapesOfficial -------------------------------------------------------------------------

def write_official(root, split="val", city="lindau", frames=("000000_000019", "000001_000019")):
    label_ids = np.zeros((8, 16), np.uint8)
    label_ids[:4] = 23  # sky
    label_ids[4:, :8] = 7  # road
    label_ids[4:, 8:] = 26  # car
    label_ids[7, :] = 1  # ego vehicle: void
    for frame in frames:
        photos = root / "leftImg8bit" / split / city
        labels = root / "gtFine" / split / city
        photos.mkdir(parents=True, exist_ok=True)
        labels.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (16, 8), (90, 90, 90)).save(photos / f"{city}_{frame}_leftImg8bit.png")
        Image.fromarray(label_ids).save(labels / f"{city}_{frame}_gtFine_labelIds.png")
        Image.fromarray(label_ids).save(labels / f"{city}_{frame}_gtFine_color.png")  # ignored


def test_official_layout_and_targets(tmp_path):
    root = tmp_path / "cityscapes"
    write_official(root)
    write_official(root, city="frankfurt", frames=("000000_000294",))
    val = CityscapesOfficial(root, "val", target="train_ids")
    assert [p.name for p in val.images] == ["frankfurt_000000_000294_leftImg8bit.png",
                                            "lindau_000000_000019_leftImg8bit.png",
                                            "lindau_000001_000019_leftImg8bit.png"]
    assert val.num_classes == 19 and val.ignore_index == 255
    image, mask = val[0]
    assert image.shape == (3, 8, 16) and image.dtype == torch.uint8
    assert mask.dtype == torch.int64 and mask.shape == (8, 16)
    assert mask[0, 0] == TRAIN_ID["sky"] and mask[5, 0] == TRAIN_ID["road"]
    assert mask[5, 15] == TRAIN_ID["car"] and (mask[7] == 255).all()
    categories = CityscapesOfficial(root, "val", limit=2, cache=True)
    assert len(categories) == 2 == len(categories.masks)
    assert categories[1][1][5, 15] == CATEGORY_NAMES.index("vehicle")
    assert cityscapes_root(tmp_path) == root


def test_official_missing_labels_and_missing_data(tmp_path):
    root = tmp_path / "cityscapes"
    write_official(root)
    (root / "gtFine" / "val" / "lindau" / "lindau_000001_000019_gtFine_labelIds.png").unlink()
    with pytest.raises(DataError, match="lindau_000001_000019_gtFine_labelIds.png"):
        CityscapesOfficial(root, "val")
    with pytest.raises(CityscapesNotFound, match="registration.*leftImg8bit_trainvaltest.zip"):
        CityscapesOfficial(root, "train")
    with pytest.raises(CityscapesNotFound, match="gtFine_trainvaltest.zip"):
        cityscapes_root(tmp_path / "nothing")
