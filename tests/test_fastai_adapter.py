"""The fastai glue: same files, same inputs, same labels and same metric as the rest of segtut."""

import math
import warnings
from types import SimpleNamespace

import pytest
import torch

pytest.importorskip("fastai")

from segtut.data import IGNORE_INDEX, NUM_CLASSES, read_image, read_mask  # noqa: E402
from segtut.fastai_adapter import (CODES, SegtutHistory, SegtutMetric,  # noqa: E402
                                   accuracy_no_void_metric, camvid_dataloaders, camvid_files,
                                   evaluate_native, fastai_pretrained_available, is_validation,
                                   make_unet_learner, mask_path, miou_metric,
                                   weights_cache_path, write_synthetic_camvid)
from segtut.metrics import ConfusionMatrix  # noqa: E402
from segtut.transforms import EvalTransform  # noqa: E402


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny_camvid(tmp_path_factory):
    """4 training, 2 val and 2 test SYNTHETIC scenes of 48x64 in CamVid's SegNet layout."""
    return write_synthetic_camvid(tmp_path_factory.mktemp("camvid"), train_images=4,
                                  eval_images=2, size=(48, 64))


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """No network and an empty torch cache."""
    monkeypatch.setenv("SEGTUT_OFFLINE", "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))


def test_paths_follow_the_segnet_layout(tmp_path):
    assert mask_path(tmp_path / "val" / "a.png") == tmp_path / "valannot" / "a.png"
    assert is_validation(tmp_path / "val" / "a.png")
    assert not is_validation(tmp_path / "train" / "a.png")
    assert len(CODES) == NUM_CLASSES + 1 and CODES[IGNORE_INDEX] == "void"


def test_train_split_trains_and_val_split_validates(tiny_camvid):
    dls = camvid_dataloaders(tiny_camvid, (32, 48), batch_size=2, device="cpu")
    assert [p.parent.name for p in dls.train_ds.items] == ["train"] * 4
    assert [p.parent.name for p in dls.valid_ds.items] == ["val"] * 2
    images, masks = dls.one_batch()
    assert images.shape == (2, 3, 32, 48) and images.dtype == torch.float32
    assert masks.shape == (2, 32, 48) and masks.dtype == torch.int64
    assert dls.train.after_item.c == len(CODES)


def test_masks_keep_their_ids_when_resized(tiny_camvid):
    """Nearest-neighbour only: a resized mask holds no value its file did not hold."""
    dls = camvid_dataloaders(tiny_camvid, (37, 53), batch_size=2, augment=False, device="cpu")
    _, masks = dls.valid.one_batch()
    for mask, path in zip(masks, dls.valid_ds.items):
        original = set(read_mask(mask_path(path)).unique().tolist())
        assert set(mask.unique().tolist()) <= original


def test_random_crop_applies_to_training_only(tiny_camvid):
    dls = camvid_dataloaders(tiny_camvid, (48, 64), crop_size=(32, 32), batch_size=2,
                             device="cpu")
    assert dls.train.one_batch()[0].shape[-2:] == (32, 32)
    assert dls.valid.one_batch()[0].shape[-2:] == (48, 64)


def test_too_few_images_for_a_batch_is_explained(tiny_camvid):
    with pytest.raises(ValueError, match="cannot fill one batch"):
        camvid_dataloaders(tiny_camvid, (32, 48), batch_size=8, device="cpu")


def test_real_camvid_inputs_match_segtut_eval_transform(camvid_dir):
    """At native size the fastai batch is exactly what EvalTransform gives: same scaling, same
    ImageNet normalisation, same labels (void = 11 kept)."""
    dls = camvid_dataloaders(camvid_dir, (360, 480), batch_size=2, train_images=2,
                             eval_images=2, augment=False, device="cpu")
    images, masks = dls.valid.one_batch()
    files = camvid_files(camvid_dir, "val", 2)
    assert list(dls.valid_ds.items) == files
    for image, mask, path in zip(images, masks, files):
        expected_image, expected_mask = EvalTransform(None)(read_image(path), read_mask(mask_path(path)))
        torch.testing.assert_close(image.as_subclass(torch.Tensor), expected_image, atol=1e-5, rtol=0)
        assert torch.equal(mask.as_subclass(torch.Tensor), expected_mask)
    assert int(masks.max()) <= IGNORE_INDEX


def test_metric_equals_one_confusion_matrix_over_the_epoch():
    generator = torch.Generator().manual_seed(0)
    metrics = [miou_metric(), accuracy_no_void_metric(), SegtutMetric("mean_dice")]
    reference = ConfusionMatrix(NUM_CLASSES, ignore_index=IGNORE_INDEX)
    for metric in metrics:
        metric.reset()
    for _ in range(3):  # three validation batches
        logits = torch.randn(2, NUM_CLASSES, 9, 13, generator=generator)
        targets = torch.randint(0, NUM_CLASSES + 1, (2, 9, 13), generator=generator)  # void too
        for metric in metrics:
            metric.accumulate(SimpleNamespace(pred=logits, y=targets))
        reference.update(logits.argmax(1), targets)
    expected = reference.compute()
    assert metrics[0].name == "mean_iou" and metrics[1].name == "accuracy_no_void"
    assert metrics[0].value == pytest.approx(expected["mean_iou"])
    assert metrics[1].value == pytest.approx(expected["pixel_accuracy"])
    assert metrics[2].value == pytest.approx(expected["mean_dice"])
    metrics[0].reset()
    assert math.isnan(metrics[0].value)


def test_metric_upsamples_smaller_logits_and_rejects_unknown_scores():
    metric = miou_metric()
    targets = torch.zeros(1, 8, 8, dtype=torch.int64)
    logits = torch.zeros(1, NUM_CLASSES, 4, 4)
    logits[:, 0] = 1.0  # predicts class 0 everywhere
    metric.accumulate(SimpleNamespace(pred=logits, y=targets))
    assert metric.value == 1.0
    with pytest.raises(ValueError, match="mean_iou"):
        SegtutMetric("iou")


def test_offline_without_cache_falls_back_to_random_weights(tiny_camvid, offline):
    available, reason = fastai_pretrained_available("resnet18")
    assert not available and "SEGTUT_OFFLINE=1" in reason
    dls = camvid_dataloaders(tiny_camvid, (32, 48), batch_size=2, device="cpu")
    with pytest.warns(UserWarning, match="RANDOM weights"):
        learn = make_unet_learner(dls, "resnet18", pretrained=True)
    assert learn.weights_source.startswith("none (random initialisation)")
    assert not learn.pretrained


@pytest.mark.parametrize("value", ["true", "yes", "on"])
def test_every_offline_value_of_segtut_config_is_honoured(value, offline, monkeypatch):
    # fastai's check used to accept only "1": SEGTUT_OFFLINE=true went to the network.
    monkeypatch.setenv("SEGTUT_OFFLINE", value)

    def download(*args, **kwargs):
        pytest.fail("tried to download although SEGTUT_OFFLINE is on")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", download)
    available, reason = fastai_pretrained_available("resnet18", timeout_s=0.5)
    assert not available and f"SEGTUT_OFFLINE={value}" in reason


def test_weights_in_torch_cache_are_used_offline(tiny_camvid, offline):
    import torchvision

    saved = torchvision.models.resnet18().state_dict()
    path = weights_cache_path("resnet18")
    path.parent.mkdir(parents=True)
    torch.save(saved, path)
    assert fastai_pretrained_available("resnet18")[0]
    dls = camvid_dataloaders(tiny_camvid, (32, 48), batch_size=2, device="cpu")
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="Pretrained weights unavailable")
        learn = make_unet_learner(dls, "resnet18", pretrained=True)
    assert learn.pretrained and str(path) in learn.weights_source
    first_conv = learn.model[0][0].weight  # the encoder's stem
    assert torch.equal(first_conv.detach().cpu(), saved["conv1.weight"])


def test_two_steps_of_fit_one_cycle_then_native_evaluation(tiny_camvid, offline):
    torch.manual_seed(0)
    dls = camvid_dataloaders(tiny_camvid, (48, 64), batch_size=2, device="cpu")  # native size
    history = SegtutHistory()
    with pytest.warns(UserWarning):
        learn = make_unet_learner(dls, "resnet18", cbs=[history])
    learn.lr_find(num_it=6, show_plot=False)
    assert history.history == []  # lr_find's trial epochs are not history
    learn.fit_one_cycle(1, 1e-3)
    assert learn.train_iter == 2  # 4 images, batches of 2
    learn.validate()
    learn.get_preds()
    (row,) = history.history  # prediction passes are not history either
    assert {"train_loss", "val_loss", "val_mean_iou", "val_pixel_accuracy", "train_seconds",
            "train_seconds_total", "lr"} <= set(row)
    test = evaluate_native(learn, "test", root=tiny_camvid, image_size=(48, 64))
    assert 0.0 <= test["mean_iou"] <= 1.0 and len(test["iou"]) == NUM_CLASSES
    # At the native size both paths feed the model the same inputs: the fastai metrics and
    # segtut's evaluation agree exactly.
    _, accuracy, mean_iou = learn.validate()
    val = evaluate_native(learn, "val", root=tiny_camvid, image_size=(48, 64))
    assert mean_iou == pytest.approx(val["mean_iou"], abs=1e-9)
    assert accuracy == pytest.approx(val["pixel_accuracy"], abs=1e-9)
    assert row["val_mean_iou"] == pytest.approx(mean_iou, abs=1e-9)


def test_unknown_architecture_is_named(tiny_camvid):
    dls = camvid_dataloaders(tiny_camvid, (32, 48), batch_size=2, device="cpu")
    with pytest.raises(ValueError, match="resnet34"):
        make_unet_learner(dls, "resnet343", pretrained=False)
