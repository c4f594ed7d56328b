"""fastai glue: CamVid ``DataLoaders``, segtut's metrics as fastai metrics, an offline-safe U-Net
learner, and evaluation at CamVid's native resolution.

This is the only segtut module that imports fastai. The fastai chapters use it so that their
numbers mean exactly what every other chapter's numbers mean:

* the same files: CamVid's ``train`` split trains and its ``val`` split validates (not a random
  split of the training images);
* the same inputs: images scaled to ``[0, 1]`` and normalised with the ImageNet mean and std
  (:data:`segtut.transforms.IMAGENET_MEAN` / ``IMAGENET_STD``), whether or not the encoder is
  pretrained (fastai's ``unet_learner`` adds this normalisation only for pretrained encoders);
* the same labels: masks read as class ids 0..10 with void = 11 (:data:`segtut.data.IGNORE_INDEX`),
  resized nearest-neighbour only, and void ignored by the loss and the metrics;
* the same metric: one :class:`segtut.metrics.ConfusionMatrix` over the whole validation split
  (:class:`SegtutMetric`), and a final evaluation with :func:`segtut.train.evaluate` at 360x480
  (:func:`evaluate_native`).

Shapes follow the data contract of :mod:`segtut`: fastai's batches are float images
``(N, 3, H, W)`` and int64 masks ``(N, H, W)``; the U-Net returns logits ``(N, 11, H, W)``.
"""

from __future__ import annotations

import random
import time
import warnings
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
# fastai.vision.all also patches Learner with fit_one_cycle, lr_find and the progress bar.
from fastai.vision.all import (Callback, CrossEntropyLossFlat, DataBlock, DataLoaders,
                               FuncSplitter, ImageBlock, Learner, LRFinder, MaskBlock, Metric,
                               Normalize, RandomCrop, Recorder, Resize, ResizeMethod,
                               aug_transforms, unet_learner)
from torch.utils.data import DataLoader, Dataset

from segtut.data import (CLASS_NAMES, IGNORE_INDEX, NUM_CLASSES, PALETTE, VOID_NAME, CamVid,
                         list_images, read_mask)
from segtut.metrics import ConfusionMatrix
from segtut.profiles import DataFolder, camvid_for_profile
from segtut.synthetic import write_synthetic_camvid
from segtut.train import evaluate, logits_of
from segtut.transforms import IMAGENET_MEAN, IMAGENET_STD, EvalTransform
from segtut.weights import (DOWNLOAD_TIMEOUT_S, OFFLINE_ENV_VARS, WeightsUnavailable,
                            torchvision_cache_path, torchvision_file)

__all__ = [
    "CODES", "OFFLINE_ENVS", "DataFolder", "camvid_folder", "write_synthetic_camvid", "mask_path",
    "is_validation", "camvid_files", "camvid_dataloaders", "SegtutMetric", "miou_metric",
    "accuracy_no_void_metric", "segmentation_loss", "weights_cache_path",
    "fastai_pretrained_available", "make_unet_learner", "SegtutHistory", "evaluate_native",
    "mask_show_kwargs",
]

#: fastai's ``codes`` for CamVid masks: pixel value ``i`` means ``CODES[i]``; void (11) is last.
#: The model predicts only the 11 real classes (``n_out=11``); void is never a prediction.
CODES = tuple(CLASS_NAMES) + (VOID_NAME,)
#: Environment variables that mean "do not try the network" (segtut.config's one rule: any of
#: them set to 1/true/yes/on).
OFFLINE_ENVS = OFFLINE_ENV_VARS


# ----------------------------------------------------------------------------------------- data

# DataFolder, camvid_folder's result, and write_synthetic_camvid live in segtut.profiles and
# segtut.synthetic (imported above), so the smoke fallback is one function for every chapter.


def camvid_folder(profile: str, data_dir: str | Path | None = None, *,
                  train_images: Optional[int] = None, eval_images: Optional[int] = None,
                  scratch: str | Path | None = None,
                  log: Callable[[str], None] = print) -> DataFolder:
    """The CamVid folder a fastai chapter reads, found (or downloaded) as every chapter does.

    Exactly :func:`segtut.profiles.camvid_for_profile`: real CamVid in the ``cpu`` and ``gpu``
    profiles (downloaded when missing); in the ``smoke`` profile real CamVid when it is on
    disk, else SYNTHETIC scenes written to ``scratch``, with the same loud banner as the
    plain-PyTorch chapters.

    Args:
        data_dir: the data directory, the folder that HOLDS ``camvid/`` (None: segtut's
            default, ``$SEGTUT_DATA_DIR`` or the per-user cache).
        train_images, eval_images: the profile's limits (describe real data; size the
            SYNTHETIC fallback).

    Returns:
        ``DataFolder(root, source, synthetic)``; ``root`` is the camvid folder.
    """
    return camvid_for_profile(profile, data_dir, train_images=train_images,
                              eval_images=eval_images, scratch=scratch, log=log)


def mask_path(image_path: str | Path) -> Path:
    """The mask of a CamVid image: ``<root>/train/x.png`` -> ``<root>/trainannot/x.png``."""
    image_path = Path(image_path)
    return image_path.parent.parent / f"{image_path.parent.name}annot" / image_path.name


def is_validation(image_path: str | Path) -> bool:
    """True for files of the ``val`` split: the splitter of :func:`camvid_dataloaders`."""
    return Path(image_path).parent.name == "val"


def camvid_files(root: str | Path, split: str, limit: Optional[int] = None) -> list[Path]:
    """The image files of one CamVid split, sorted by name (as :class:`segtut.data.CamVid`),
    the first ``limit`` of them if given."""
    files = list_images(Path(root) / split)
    return files[:limit] if limit is not None else files


def camvid_dataloaders(root: str | Path | None, image_size: tuple[int, int], *,
                       crop_size: Optional[tuple[int, int]] = None, batch_size: int = 8,
                       train_images: Optional[int] = None, eval_images: Optional[int] = None,
                       num_workers: int = 0, seed: int = 0, augment: bool = True,
                       check_masks: bool = True, device=None) -> DataLoaders:
    """fastai ``DataLoaders`` over CamVid: the ``train`` split trains, the ``val`` split validates.

    Built with ``DataBlock(blocks=(ImageBlock, MaskBlock(CODES)))``:

    * item transforms: ``Resize(image_size, method="squish")`` on both splits (PIL bilinear for
      images, **nearest** for ``PILMask``), then, with ``crop_size``, a random crop of the
      training images only (validation images stay whole);
    * batch transforms (training only, with ``augment``): fastai's ``aug_transforms()``:
      horizontal flips, rotations up to 10 degrees, zooms up to 1.1, perspective warps (the mask
      follows the image through the same warp, sampled nearest-neighbour; corners uncovered by a
      rotation are filled by reflection in image and mask alike) and brightness/contrast changes
      of the image only;
    * always: ``Normalize`` with the ImageNet mean and std, the same normalisation as
      :mod:`segtut.transforms`, so a model sees identical inputs here and in
      :func:`evaluate_native`.

    Masks keep CamVid's ids: 0..10 for the classes, 11 for void (``CODES[11]``).

    Args:
        root: the CamVid folder (holding ``train/``, ``trainannot/``, ...); None finds or
            downloads it (:func:`segtut.download.camvid_root`).
        image_size: ``(height, width)`` of the model's input on both splits.
        crop_size: ``(height, width)`` of random training crops taken after the resize (None: no
            crop).
        batch_size: images per batch (validation too). The training loader drops the last
            incomplete batch, so it needs ``train_images >= batch_size``.
        train_images, eval_images: keep the first N training / validation images (smoke runs).
        num_workers: loader processes (0: load in the main process).
        seed: seeds the training loader's shuffling; random augmentations draw from the global
            generators (seed them with :func:`segtut.train.seed_everything`).
        augment: add ``aug_transforms()`` to the training batches.
        check_masks: read every mask once with :func:`segtut.data.read_mask`, so a bad file fails
            now with an error naming it, not in the middle of an epoch.
        device: where batches go (None: fastai's default, the GPU when there is one).

    Returns:
        ``DataLoaders`` whose batches are ``(TensorImage (N, 3, H, W) float32, TensorMask
        (N, H, W) int64)``; the masks' ``codes`` are :data:`CODES` (12 names, void last).
    """
    if root is None:
        from segtut.download import camvid_root

        root = camvid_root()
    root = Path(root)
    train = camvid_files(root, "train", train_images)
    val = camvid_files(root, "val", eval_images)
    if len(train) < batch_size:
        raise ValueError(f"{len(train)} training images cannot fill one batch of {batch_size} "
                         "(the last incomplete batch is dropped): lower batch_size or use more "
                         "images.")
    if check_masks:
        for image in train + val:
            read_mask(mask_path(image))  # raises DataError naming the file and the bad values
    item_tfms = [Resize(image_size, method=ResizeMethod.Squish)]
    if crop_size is not None:
        item_tfms.append(RandomCrop(crop_size, split_idx=0))  # training only
    batch_tfms = list(aug_transforms()) if augment else []
    batch_tfms.append(Normalize.from_stats(IMAGENET_MEAN, IMAGENET_STD))
    block = DataBlock(blocks=(ImageBlock, MaskBlock(codes=list(CODES))),
                      get_y=mask_path, splitter=FuncSplitter(is_validation),
                      item_tfms=item_tfms, batch_tfms=batch_tfms)
    dls = block.dataloaders(train + val, bs=batch_size, num_workers=num_workers, path=root,
                            device=device)
    dls.train.rng = random.Random(seed)  # the shuffling order, independent of global state
    return dls


# -------------------------------------------------------------------------------------- metrics

class SegtutMetric(Metric):
    """A segtut score as a fastai metric: one confusion matrix over the whole validation epoch.

    fastai calls :meth:`reset` before validating, :meth:`accumulate` after every validation
    batch and reads :attr:`value` at the end. Every batch adds to one
    :class:`segtut.metrics.ConfusionMatrix`, so the score is the one of the whole split, never an
    average of per-batch scores. Void pixels (``ignore_index``) are left out.

    Args:
        name: the score to report, a key of :meth:`segtut.metrics.ConfusionMatrix.compute`:
            ``"mean_iou"``, ``"pixel_accuracy"`` (void excluded), ``"mean_dice"`` or
            ``"mean_accuracy"``. It is also the column name in fastai's table unless
            ``label`` is given.
        num_classes: number of real classes (11 for CamVid).
        ignore_index: the void label (11 for CamVid).
        label: column name in fastai's training table (default: ``name``).

    Predictions are ``learn.pred``, logits ``(N, C, H, W)`` (argmaxed over dim 1), and targets
    ``learn.y``, int64 ``(N, H, W)``; logits of another size are upsampled bilinearly to the
    targets' size (labels are never downsampled).
    """

    SCORES = ("mean_iou", "pixel_accuracy", "mean_dice", "mean_accuracy")

    def __init__(self, name: str = "mean_iou", num_classes: int = NUM_CLASSES,
                 ignore_index: Optional[int] = IGNORE_INDEX, label: Optional[str] = None):
        if name not in self.SCORES:
            raise ValueError(f"Unknown score {name!r}; choose one of {', '.join(self.SCORES)}.")
        self.score, self.label = name, label or name
        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.reset()

    @property
    def name(self) -> str:
        return self.label

    def reset(self) -> None:
        self.matrix = ConfusionMatrix(self.num_classes, ignore_index=self.ignore_index)

    def accumulate(self, learn) -> None:
        logits = logits_of(learn.pred)  # (N, C, h, w)
        targets = torch.as_tensor(learn.y).as_subclass(torch.Tensor).long()  # (N, H, W)
        logits = logits.as_subclass(torch.Tensor)
        if tuple(logits.shape[-2:]) != tuple(targets.shape[-2:]):
            logits = F.interpolate(logits.float(), size=tuple(targets.shape[-2:]),
                                   mode="bilinear", align_corners=False)  # (N, C, H, W)
        self.matrix.update(logits.argmax(dim=1), targets)

    @property
    def value(self) -> float:
        return self.matrix.compute()[self.score]


def miou_metric(num_classes: int = NUM_CLASSES, ignore_index: int = IGNORE_INDEX) -> SegtutMetric:
    """Mean IoU over the classes, void excluded, as a fastai metric (column ``mean_iou``)."""
    return SegtutMetric("mean_iou", num_classes, ignore_index)


def accuracy_no_void_metric(num_classes: int = NUM_CLASSES,
                            ignore_index: int = IGNORE_INDEX) -> SegtutMetric:
    """Pixel accuracy over non-void pixels, as a fastai metric (column ``accuracy_no_void``)."""
    return SegtutMetric("pixel_accuracy", num_classes, ignore_index, label="accuracy_no_void")


def segmentation_loss(ignore_index: int = IGNORE_INDEX) -> CrossEntropyLossFlat:
    """fastai's ``CrossEntropyLossFlat(axis=1, ignore_index=...)``.

    The same loss as ``nn.CrossEntropyLoss(ignore_index=11)`` on logits ``(N, C, H, W)`` and
    masks ``(N, H, W)``: fastai moves the class axis last and flattens every pixel into a row.
    Use it rather than the plain torch loss in a fastai ``Learner``: it also tells fastai how to
    turn logits into predictions (softmax, then argmax over the class axis), which
    ``get_preds(with_decoded=True)``, ``show_results`` and ``Interpretation`` rely on.
    """
    return CrossEntropyLossFlat(axis=1, ignore_index=ignore_index)


# ----------------------------------------------------------------------------- pretrained weights

def weights_cache_path(arch_name: str) -> Path:
    """Where torch keeps the ImageNet weights that fastai loads for torchvision's ``arch_name``.

    ``$TORCH_HOME/hub/checkpoints/<file>`` (``~/.cache/torch`` without ``TORCH_HOME``); copy
    the file there to use pretrained weights on a machine without internet.
    """
    return torchvision_cache_path(torchvision.models.get_model_weights(arch_name).DEFAULT)


def fastai_pretrained_available(arch_name: str, *, timeout_s: float = DOWNLOAD_TIMEOUT_S,
                                download: bool = True) -> tuple[bool, str]:
    """Can fastai load ImageNet weights for torchvision's ``arch_name`` (e.g. ``"resnet34"``)?

    Looks in torch's cache first (:func:`weights_cache_path`). When the file is missing it tries
    to download it there (:func:`segtut.weights.torchvision_file`, with a socket timeout of
    ``timeout_s`` seconds), unless ``download`` is False or the network is switched off
    (:func:`segtut.config.offline_reason`: ``SEGTUT_OFFLINE`` or ``HF_HUB_OFFLINE`` set to
    1/true/yes/on) or download.pytorch.org cannot be reached.

    Returns:
        ``(available, description)``: where the weights are, or why they cannot be had.
    """
    weights = torchvision.models.get_model_weights(arch_name).DEFAULT
    label = f"ImageNet {arch_name} weights ({weights})"
    try:
        _, where = torchvision_file(weights, download=download, timeout_s=timeout_s)
    except WeightsUnavailable as error:
        return False, f"{label} {error}"
    return True, f"{label}, {where}"


def make_unet_learner(dls: DataLoaders, arch: str = "resnet34", pretrained: bool = True, *,
                      n_out: int = NUM_CLASSES, loss_func=None, metrics=None,
                      timeout_s: float = DOWNLOAD_TIMEOUT_S, **kwargs) -> Learner:
    """fastai's ``unet_learner`` (a DynamicUnet on a torchvision ResNet), safe to run offline.

    With ``pretrained``, the ImageNet weights are used when :func:`fastai_pretrained_available`
    finds or downloads them; otherwise a warning says why and the encoder starts from random
    weights (fastai then leaves it unfrozen). Either way ``learn.weights_source`` says which,
    for the run card, and ``learn.pretrained`` is True only when ImageNet weights were loaded
    (and the encoder frozen, as ``unet_learner`` does).

    Args:
        dls: from :func:`camvid_dataloaders` (already normalised with ImageNet statistics).
        arch: a torchvision ResNet name: ``"resnet18"``, ``"resnet34"``, ``"resnet50"``...
        n_out: output channels = real classes (11); void is not predicted.
        loss_func: default :func:`segmentation_loss` (cross-entropy ignoring void).
        metrics: default ``[accuracy_no_void_metric(), miou_metric()]``.
        timeout_s: socket timeout of the download attempt.
        **kwargs: passed to ``unet_learner`` (``path``, ``cbs``, ``self_attention``, ...).
    """
    arch_function = getattr(torchvision.models, arch, None)
    if arch_function is None or not callable(arch_function):
        raise ValueError(f"Unknown torchvision architecture {arch!r}; use a name such as "
                         "'resnet18' or 'resnet34'.")
    use_pretrained = False
    if pretrained:
        use_pretrained, description = fastai_pretrained_available(arch, timeout_s=timeout_s)
        if use_pretrained:
            weights_source = description
        else:
            weights_source = f"none (random initialisation): {description}"
            warnings.warn(f"Pretrained weights unavailable: {description}. The {arch} encoder "
                          "starts from RANDOM weights. To use ImageNet weights offline, copy the "
                          f"file to {weights_cache_path(arch)} (or set TORCH_HOME).", stacklevel=2)
    else:
        weights_source = "none (random initialisation, pretrained=False)"
    learn = unet_learner(
        dls, arch_function, pretrained=use_pretrained, n_out=n_out,
        loss_func=loss_func if loss_func is not None else segmentation_loss(),
        metrics=metrics if metrics is not None else [accuracy_no_void_metric(), miou_metric()],
        **kwargs)
    learn.weights_source = weights_source
    return learn


# ----------------------------------------------------------------------------- history and eval

class SegtutHistory(Callback):
    """Collects one dict per epoch, across several ``fit`` calls, in the format of
    :func:`segtut.train.fit`'s history, so :func:`segtut.viz.plot_history` can draw it.

    Keys: ``epoch`` (counting on from earlier fits), ``train_loss`` (fastai's smoothed training
    loss at the end of the epoch), ``val_loss``, ``val_<metric>`` for every metric (so
    ``val_mean_iou`` for :func:`miou_metric`; ``accuracy_no_void`` is stored as
    ``val_pixel_accuracy``), ``lr`` (of the last parameter group), ``train_seconds``,
    ``train_seconds_total`` and ``eval_seconds``. Only training epochs are recorded: not
    ``lr_find``'s trial steps, nor the prediction passes of ``validate``, ``get_preds`` or
    ``show_results``.
    """

    order = Recorder.order + 1  # after the Recorder has computed the epoch's values
    RENAME = {"accuracy_no_void": "pixel_accuracy"}

    def __init__(self):
        self.history: list[dict] = []
        self._trained = False

    def before_epoch(self):
        self._trained = False  # get_preds, validate and show_results run epochs without training

    def before_train(self):
        self._train_start = time.perf_counter()

    def after_train(self):
        self._train_seconds = time.perf_counter() - self._train_start
        self._trained = True

    def before_validate(self):
        self._eval_start = time.perf_counter()

    def after_validate(self):
        self._eval_seconds = time.perf_counter() - self._eval_start

    def after_epoch(self):
        if not self._trained or any(isinstance(cb, LRFinder) for cb in self.learn.cbs):
            return  # a prediction pass, or lr_find's trial steps: not training epochs
        names = list(self.learn.recorder.metric_names[1:])  # drop "epoch"
        values = list(self.learn.final_record)  # train_loss, valid_loss, metrics...
        row = {"epoch": len(self.history) + 1}
        for name, value in zip(names, values):
            if name == "time":
                continue
            key = {"train_loss": "train_loss", "valid_loss": "val_loss"}.get(
                name, "val_" + self.RENAME.get(name, name))
            row[key] = float(value) if value is not None else float("nan")
        train_seconds = self._train_seconds
        total = (self.history[-1]["train_seconds_total"] if self.history else 0.0) + train_seconds
        row.update(lr=float(self.learn.opt.hypers[-1]["lr"]), train_seconds=train_seconds,
                   train_seconds_total=total,
                   eval_seconds=getattr(self, "_eval_seconds", float("nan")))
        self.history.append(row)


def evaluate_native(learn: Learner, dataset_split: str | Dataset, *,
                    root: str | Path | None = None, image_size: Optional[tuple[int, int]] = None,
                    limit: Optional[int] = None, batch_size: int = 8, num_workers: int = 0,
                    device=None, progress: bool = False) -> dict:
    """Evaluate a fastai learner's model as every segtut chapter does.

    The images go through :class:`segtut.transforms.EvalTransform` (resize to ``image_size``,
    scale to [0, 1], ImageNet normalisation: the inputs fastai's pipeline gave the model), the
    masks stay at their native 360x480, the logits are upsampled to them, and one confusion
    matrix over the whole split gives the scores (:func:`segtut.train.evaluate`).

    Args:
        learn: a trained learner whose model returns logits ``(N, C, h, w)``.
        dataset_split: ``"val"`` or ``"test"`` (read from ``root`` with ``image_size`` and
            ``limit``), or a dataset already yielding ``(image, mask)`` pairs so transformed.
        root: the CamVid folder (None: found or downloaded).
        image_size: ``(height, width)`` of the model's input: the size it was trained at.

    Returns:
        The dict of :func:`segtut.train.evaluate`: ``mean_iou``, ``pixel_accuracy``, ``iou``
        (11 floats), ``confusion``, ...
    """
    if isinstance(dataset_split, str):
        if image_size is None:
            raise ValueError("evaluate_native needs image_size (the training input size) to "
                             "read a split by name.")
        dataset = CamVid(root, dataset_split, EvalTransform(image_size), limit=limit)
    else:
        dataset = dataset_split
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers)
    model = learn.model
    device = torch.device(device) if device is not None else next(model.parameters()).device
    return evaluate(model, loader, device, num_classes=NUM_CLASSES, ignore_index=IGNORE_INDEX,
                    progress=progress)


def mask_show_kwargs(palette: Sequence[Sequence[int]] = PALETTE,
                     alpha: Optional[float] = None) -> dict:
    """Keyword arguments that make fastai draw masks in segtut's CamVid colours (void black).

    Pass them to ``learn.show_results(**mask_show_kwargs())``, ``dls.show_batch(...)`` or
    ``interp.plot_top_losses(k, **mask_show_kwargs(alpha=1.0))``. RGB images ignore them.

    Args:
        palette: one RGB colour per class id, void last.
        alpha: mask opacity; None keeps fastai's 0.5 (masks drawn over their image).
    """
    from matplotlib.colors import ListedColormap

    colours = np.asarray(palette, dtype=np.float64) / 255.0  # (12, 3): classes, then void
    # vmin/vmax centre every id on its colour: id i maps to (i + 0.5) / 12 of the colour map.
    kwargs = {"cmap": ListedColormap(colours), "vmin": -0.5, "vmax": len(colours) - 0.5,
              "interpolation": "nearest"}
    if alpha is not None:
        kwargs["alpha"] = alpha
    return kwargs
