"""Oxford-IIIT Pet through torchvision, on small files written in torchvision's layout."""

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import tv_tensors

from segtut.datasets.oxford_pet import OxfordPet
from segtut.errors import DataError


def write_pets(data_dir):
    """``oxford-iiit-pet/{images,annotations/trimaps}`` and the split files torchvision reads."""
    base = data_dir / "oxford-iiit-pet"
    (base / "images").mkdir(parents=True)
    (base / "annotations" / "trimaps").mkdir(parents=True)
    trimap = np.full((6, 8), 2, np.uint8)  # background
    trimap[1:5, 2:6] = 3  # border
    trimap[2:4, 3:5] = 1  # pet
    names = {"trainval": ["Abyssinian_1", "great_pyrenees_10"], "test": ["Bengal_3"]}
    for split, images in names.items():
        lines = []
        for name in images:
            Image.new("RGB", (8, 6), (200, 150, 100)).save(base / "images" / f"{name}.jpg")
            Image.fromarray(trimap).save(base / "annotations" / "trimaps" / f"{name}.png")
            # Image, class id (1..37), species (1 cat, 2 dog), breed id: torchvision's format.
            lines.append(f"{name} 1 1 1")
        (base / "annotations" / f"{split}.txt").write_text("\n".join(lines) + "\n")
    return base


@pytest.fixture
def online(monkeypatch):
    for name in ("SEGTUT_OFFLINE", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(name, raising=False)


def test_trimaps_become_background_pet_and_ignored_border(tmp_path, online):
    write_pets(tmp_path)
    pets = OxfordPet(tmp_path, "trainval", cache=True)
    assert [p.name for p in pets.images] == ["Abyssinian_1.jpg", "great_pyrenees_10.jpg"]
    assert pets.num_classes == 2 and pets.ignore_index == 255
    assert pets.class_names == ("background", "pet") and len(pets.palette) == 2
    image, mask = pets[0]
    assert isinstance(image, tv_tensors.Image) and image.dtype == torch.uint8
    assert image.shape == (3, 6, 8)
    assert isinstance(mask, tv_tensors.Mask) and mask.dtype == torch.int64
    assert mask[0, 0] == 0 and mask[2, 3] == 1 and mask[1, 2] == 255
    assert pets.load(0) is pets.load(0)
    assert len(OxfordPet(tmp_path, "test")) == 1
    assert len(OxfordPet(tmp_path, limit=1)) == 1


def test_border_as_a_class(tmp_path, online):
    write_pets(tmp_path)
    pets = OxfordPet(tmp_path, border="class", transform=lambda i, m: (i, m + 0))
    assert pets.num_classes == 3 and pets.class_names[-1] == "border"
    mask = pets[0][1]
    assert sorted(torch.unique(mask).tolist()) == [0, 1, 2] and mask[1, 2] == 2


def test_invalid_choices_name_the_valid_ones(tmp_path, online):
    write_pets(tmp_path)
    with pytest.raises(ValueError, match="ignore, class"):
        OxfordPet(tmp_path, border="drop")
    with pytest.raises(ValueError, match="trainval, test"):
        OxfordPet(tmp_path, split="train")


def test_a_trimap_with_zero_is_named(tmp_path, online):
    base = write_pets(tmp_path)
    Image.fromarray(np.zeros((6, 8), np.uint8)).save(
        base / "annotations" / "trimaps" / "Bengal_3.png")
    with pytest.raises(DataError, match="Bengal_3.png holds the value 0"):
        OxfordPet(tmp_path, "test")[0]


def test_offline_and_missing_says_what_to_do(tmp_path, monkeypatch):
    import torchvision.datasets.oxford_iiit_pet as tv_pet

    monkeypatch.setattr(tv_pet, "download_and_extract_archive",
                        lambda *a, **k: pytest.fail("downloaded while offline"))
    monkeypatch.setenv("SEGTUT_OFFLINE", "1")
    with pytest.raises(DataError, match="SEGTUT_OFFLINE=1 is set.*images.tar.gz"):
        OxfordPet(tmp_path)
    monkeypatch.delenv("SEGTUT_OFFLINE")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with pytest.raises(DataError, match="download=False"):
        OxfordPet(tmp_path, download=False)


def test_a_failed_download_is_a_data_error(tmp_path, online, monkeypatch):
    import torchvision.datasets.oxford_iiit_pet as tv_pet

    def no_network(*args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.setattr(tv_pet, "download_and_extract_archive", no_network)
    with pytest.raises(DataError, match="network unreachable"):
        OxfordPet(tmp_path)


def test_a_missing_split_file_is_a_data_error(tmp_path, online):
    base = write_pets(tmp_path)
    (base / "annotations" / "test.txt").unlink()
    with pytest.raises(DataError, match="incomplete.*test.txt"):
        OxfordPet(tmp_path, "test")
