"""Data sets beyond CamVid, one module each, all returning the data contract of :mod:`segtut.data`.

* :mod:`~segtut.datasets.cityscapes`: the Cityscapes label table (34 labels, 19 train ids,
  7 categories + void), the pix2pix / Kaggle image pairs (colour labels mapped by nearest
  colour) and the official ``leftImg8bit`` / ``gtFine`` layout;
* :mod:`~segtut.datasets.ade20k`: ADE20K / SceneParse150 (0 = "other" -> ignored, 1..150 -> 0..149);
* :mod:`~segtut.datasets.oxford_pet`: Oxford-IIIT Pet trimaps through torchvision;
* :mod:`~segtut.datasets.horses`: the Weizmann Horse set, a real messy two-class folder pair;
* :mod:`~segtut.datasets.folders`: :class:`~segtut.datasets.folders.MaskFolder`, your own
  images + masks (class-id PNGs, 0/255, colour, JPEG or resized masks, each only when asked);
* :mod:`~segtut.datasets.describe`: :func:`~segtut.datasets.describe.describe_dataset`, a
  report on a folder pair before training;
* :mod:`~segtut.datasets.splits`: duplicate groups and train / val / test splits that cannot leak;
* :mod:`~segtut.datasets.annotations`: labelme and COCO polygons -> class-id PNG masks;
* :mod:`~segtut.datasets.colours`: colour labels -> class ids by nearest palette colour;
* :mod:`~segtut.datasets.labels`: :data:`IGNORE_INDEX`, the ignore label of all of them (255).

Every item is ``(image, mask)``: ``tv_tensors.Image`` uint8 ``(3, H, W)`` and ``tv_tensors.Mask``
int64 ``(H, W)`` with class ids ``0 .. num_classes - 1`` or the ignore label, and every dataset
object carries ``num_classes``, ``ignore_index``, ``class_names``, ``palette`` and ``images``.
The ignore label is 255 here; CamVid keeps SegNet's 11 (:data:`segtut.data.IGNORE_INDEX`). Code
that serves both reads ``dataset.ignore_index`` rather than either constant.

Import the module you need (``from segtut.datasets.cityscapes import CityscapesPairs``):
nothing is imported here, so ``import segtut.datasets`` stays cheap.
"""

from segtut.datasets.labels import IGNORE_INDEX

__all__ = ["IGNORE_INDEX"]
