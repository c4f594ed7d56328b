"""segtut.inference: predictions on images of any size, tiles, flips and folders."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from segtut.data import DataError
from segtut.inference import (OutputError, Prediction, as_image_tensor, normalize_image,
                              output_paths, pad_to_multiple, predict_folder, predict_image,
                              window_starts, window_weights)
from segtut.models import build_model
from segtut.saved_model import load_model, save_model
from segtut.transforms import IMAGENET_MEAN, IMAGENET_STD

pytestmark = pytest.mark.usefixtures("one_thread")


def random_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def tiny_unet(num_classes: int = 3, depth: int = 4) -> nn.Module:
    torch.manual_seed(0)
    return build_model("unet", num_classes, base_channels=4, depth=depth).eval()


def pointwise(num_classes: int = 4) -> nn.Module:
    """A 1x1 convolution: every pixel's logits depend on that pixel only (exactly
    translation- and flip-equivariant)."""
    torch.manual_seed(1)
    return nn.Conv2d(3, num_classes, kernel_size=1).eval()


def reference_probabilities(model, image: np.ndarray, multiple: int = 32) -> torch.Tensor:
    """softmax(model(pad(x)))[..., :H, :W] written out by hand, ``(C, H, W)``."""
    x = normalize_image(torch.from_numpy(image).permute(2, 0, 1), IMAGENET_MEAN, IMAGENET_STD)
    height, width = image.shape[:2]
    with torch.no_grad():
        logits = model(pad_to_multiple(x, multiple))[..., :height, :width]
    return logits.softmax(dim=1)[0]


def test_odd_sizes_give_labels_of_exactly_that_size():
    prediction = predict_image(tiny_unet(), random_image(37, 53))
    assert isinstance(prediction, Prediction)
    assert prediction.labels.shape == (37, 53) and prediction.labels.dtype == torch.int64
    assert prediction.probabilities.shape == (3, 37, 53)
    assert prediction.probabilities.dtype == torch.float32
    assert torch.allclose(prediction.probabilities.sum(0), torch.ones(37, 53), atol=1e-5)
    assert torch.equal(prediction.labels, prediction.probabilities.argmax(0))


def test_plain_prediction_is_padding_then_cropping_the_logits():
    model, image = tiny_unet(), random_image(37, 53, seed=2)
    prediction = predict_image(model, image, pad_multiple=16)
    assert torch.allclose(prediction.probabilities, reference_probabilities(model, image, 16),
                          atol=1e-6)


@pytest.mark.parametrize("mode", ["reflect", "replicate", "constant"])
def test_padding_round_trip(mode):
    images = torch.randn(2, 3, 37, 53)
    padded = pad_to_multiple(images, 16, mode)
    assert padded.shape == (2, 3, 48, 64)
    assert torch.equal(padded[..., :37, :53], images)
    if mode == "constant":
        assert padded[..., 37:, :].abs().sum() == 0
    # Reflection cannot pad by more than the size: it falls back to replicating the edge.
    small = pad_to_multiple(torch.randn(1, 3, 5, 7), 32, mode)
    assert small.shape == (1, 3, 32, 32)
    assert pad_to_multiple(images, 1, mode) is images


def test_every_kind_of_input_gives_the_same_prediction(tmp_path):
    image = random_image(21, 30, seed=4)
    Image.fromarray(image).save(tmp_path / "image.png")
    model = pointwise()
    expected = predict_image(model, image).probabilities
    for other in (tmp_path / "image.png", str(tmp_path / "image.png"), Image.fromarray(image),
                  torch.from_numpy(image).permute(2, 0, 1).contiguous(),
                  np.dstack([image, np.full((21, 30), 255, np.uint8)])):  # RGBA
        assert torch.equal(predict_image(model, other).probabilities, expected)


def test_bad_inputs_are_refused_with_a_reason(tmp_path):
    with pytest.raises(DataError, match="missing.png"):
        predict_image(pointwise(), tmp_path / "missing.png")
    with pytest.raises(ValueError, match="uint8"):
        as_image_tensor(np.zeros((8, 8, 3), dtype=np.float32))
    with pytest.raises(ValueError, match=r"\(3, H, W\)"):
        as_image_tensor(torch.zeros(8, 8, 3, dtype=torch.uint8))
    with pytest.raises(ValueError, match="num_classes=5"):
        predict_image(pointwise(4), random_image(8, 8), num_classes=5)


def test_input_size_resizes_and_matches_evaluation():
    """After a resize, the probabilities are softmax(resize(logits)), as evaluate() scores."""
    model, image = tiny_unet(), random_image(45, 61, seed=5)
    prediction = predict_image(model, image, input_size=(32, 48), pad_multiple=16)
    assert prediction.labels.shape == (45, 61)
    x = normalize_image(torch.from_numpy(image).permute(2, 0, 1), IMAGENET_MEAN, IMAGENET_STD)
    x = F.interpolate(x, size=(32, 48), mode="bilinear", align_corners=False, antialias=True)
    with torch.no_grad():
        logits = F.interpolate(model(x), size=(45, 61), mode="bilinear", align_corners=False)
    assert torch.allclose(prediction.probabilities, logits.softmax(1)[0], atol=1e-5)


def test_window_positions_cover_the_image():
    assert window_starts(10, 16, 0.5) == [0]
    assert window_starts(100, 32, 0.5) == [0, 16, 32, 48, 64, 68]
    for size, tile, overlap in ((100, 32, 0.5), (97, 30, 0.25), (64, 32, 0.0)):
        starts = window_starts(size, tile, overlap)
        covered = np.zeros(size, bool)
        for start in starts:
            covered[start:start + tile] = True
        assert covered.all() and starts[-1] + tile == size
    weights = window_weights(9, 12)
    assert weights.shape == (9, 12) and weights.min() > 0 and weights.max() == 1
    assert weights[4, 5:7].min() > weights[0, 0]  # centre counts more than the corner


def test_sliding_window_equals_plain_prediction_when_one_window_covers_the_image():
    model, image = tiny_unet(), random_image(37, 53, seed=6)
    plain = predict_image(model, image)
    for tile in ((37, 53), (64, 64)):
        tiled = predict_image(model, image, tile=tile)
        assert torch.allclose(tiled.probabilities, plain.probabilities, atol=1e-6)
        assert torch.equal(tiled.labels, plain.labels)


@pytest.mark.parametrize("blend", ["gaussian", "uniform"])
@pytest.mark.parametrize("tile,overlap", [((16, 16), 0.5), ((10, 24), 0.3), ((37, 8), 0.0)])
def test_small_tiles_are_exact_for_a_pointwise_model(blend, tile, overlap):
    model, image = pointwise(), random_image(37, 53, seed=7)
    plain = predict_image(model, image)
    tiled = predict_image(model, image, tile=tile, overlap=overlap, blend=blend, batch_size=3)
    assert torch.allclose(tiled.probabilities, plain.probabilities, atol=1e-5)
    assert torch.equal(tiled.labels, plain.labels)


class ImageMeanSubtracted(nn.Module):
    """A 1x1 convolution of the image minus its mean colour: every pixel depends on the whole
    image, so tiles, which see only part of it, must change the result."""

    def __init__(self):
        super().__init__()
        self.conv = pointwise()

    def forward(self, images):
        return self.conv(images - images.mean(dim=(2, 3), keepdim=True))


def test_small_tiles_change_a_model_with_context():
    """The test above can fail: tiles see less context than the whole image."""
    model, image = ImageMeanSubtracted().eval(), random_image(37, 53, seed=8)
    plain = predict_image(model, image, pad_multiple=1).probabilities
    whole = predict_image(model, image, pad_multiple=1, tile=(37, 53)).probabilities
    assert torch.allclose(plain, whole, atol=1e-6)
    tiled = predict_image(model, image, pad_multiple=1, tile=(16, 16)).probabilities
    assert (plain - tiled).abs().max() > 1e-2


def test_flip_averages_the_image_and_its_mirror():
    torch.manual_seed(2)
    model = nn.Conv2d(3, 4, kernel_size=3, padding=1).eval()  # not mirror-symmetric
    image = random_image(16, 24, seed=9)
    plain = predict_image(model, image, pad_multiple=1).probabilities
    mirrored = predict_image(model, image[:, ::-1].copy(), pad_multiple=1).probabilities.flip(-1)
    assert not torch.allclose(plain, mirrored, atol=1e-3)
    flipped = predict_image(model, image, pad_multiple=1, flip=True).probabilities
    assert torch.allclose(flipped, (plain + mirrored) / 2, atol=1e-6)
    # Flip TTA makes any model mirror-symmetric: mirroring the input mirrors the output.
    of_mirror = predict_image(model, image[:, ::-1].copy(), pad_multiple=1, flip=True)
    assert torch.allclose(of_mirror.probabilities, flipped.flip(-1), atol=1e-6)


def test_flip_changes_nothing_for_a_mirror_symmetric_model():
    model, image = pointwise(), random_image(19, 23, seed=10)
    assert torch.allclose(predict_image(model, image, flip=True).probabilities,
                          predict_image(model, image).probabilities, atol=1e-6)


def test_a_saved_model_brings_its_normalisation_and_input_size(tmp_path):
    model, image = tiny_unet(depth=2), random_image(30, 40, seed=11)
    save_model(tmp_path / "m", model, architecture="unet", options={"base_channels": 4, "depth": 2},
               class_names=["a", "b", "c"], mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25),
               image_size=(24, 32), input_size=(24, 32))
    saved = load_model(tmp_path / "m")
    expected = predict_image(model, image, mean=(0.5,) * 3, std=(0.25,) * 3, input_size=(24, 32),
                             pad_multiple=4)
    assert torch.equal(saved.predict(image).probabilities, expected.probabilities)
    assert torch.equal(predict_image(saved, image).labels, expected.labels)
    imagenet = predict_image(model, image, input_size=(24, 32), pad_multiple=4)
    assert not torch.allclose(imagenet.probabilities, expected.probabilities, atol=1e-3)


def test_predict_folder_writes_three_files_per_image_and_reports_failures(tmp_path):
    inputs = tmp_path / "photos"
    inputs.mkdir()
    Image.fromarray(random_image(20, 28, seed=12)).save(inputs / "a.png")
    Image.fromarray(random_image(17, 23, seed=13)).save(inputs / "b.jpg")
    (inputs / "broken.png").write_bytes(b"not a png")
    model = pointwise(3)
    palette = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (0, 0, 0)]
    result = predict_folder(model, [inputs, tmp_path / "missing.jpg"], tmp_path / "out",
                            palette=palette, progress=False)
    assert sorted(p.name for p in result.written) == ["a.png", "b.jpg"]
    assert set(result.failed) == {inputs / "broken.png", tmp_path / "missing.jpg"}
    assert "broken.png" in result.failed[inputs / "broken.png"]
    assert "broken.png" in result.summary() and "missing.jpg" in result.summary()

    paths = output_paths(tmp_path / "out", "a")
    assert result.written[inputs / "a.png"] == paths
    expected = predict_image(model, inputs / "a.png").labels.numpy()
    labels = np.asarray(Image.open(paths["labels"]))
    assert labels.shape == (20, 28) and np.array_equal(labels, expected)
    colours = np.asarray(Image.open(paths["mask"]).convert("RGB"))
    assert np.array_equal(colours, np.asarray(palette, np.uint8)[expected])
    assert Image.open(paths["overlay"]).size == (28, 20)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(
        f"{stem}_{kind}" for stem in "ab" for kind in ("mask.png", "labels.png", "overlay.jpg"))


def test_predict_folder_keeps_images_with_the_same_name_apart(tmp_path):
    Image.fromarray(random_image(8, 8, seed=14)).save(tmp_path / "x.png")
    Image.fromarray(random_image(8, 8, seed=15)).save(tmp_path / "x.jpg")
    result = predict_folder(pointwise(3), [tmp_path / "x.png", tmp_path / "x.jpg"],
                            tmp_path / "out", palette=[(1, 1, 1)] * 4, progress=False)
    assert {paths["labels"].name for paths in result.written.values()} == {
        "x_png_labels.png", "x_jpg_labels.png"}


def test_predict_folder_refuses_an_output_folder_it_cannot_write(tmp_path):
    (tmp_path / "taken").write_text("a file where the folder should be")
    with pytest.raises(OutputError, match="a file is in the way"):
        predict_folder(pointwise(3), [], tmp_path / "taken" / "out", progress=False)
