"""segtut: the helpers behind the segtut tutorial series on semantic segmentation.

The data contract, stated once and used by every module and chapter:

* images are float32 tensors ``(N, 3, H, W)``, normalised with the ImageNet mean and std;
* masks are int64 tensors ``(N, H, W)`` whose values are class ids ``0 .. num_classes - 1``
  or the ignore label (:data:`segtut.data.IGNORE_INDEX`, 11 = void for CamVid);
* the ignore label is excluded from both the loss and the metric;
* models return logits ``(N, num_classes, H, W)`` at the input size;
* masks are resized with nearest-neighbour interpolation only and padded with the ignore label;
  an image and its mask always share the same random crop and flip;
* metrics are computed from one confusion matrix accumulated over a whole split, at the label's
  native resolution (logits are upsampled to the label, labels are never downsampled).

Nothing happens at import time: no seeding, no downloads, no device selection, and not even
torch is imported: ``segtut.load_model`` (:func:`segtut.saved_model.load_model`) is looked up
when first used.
"""

__version__ = "0.1.0"


def __getattr__(name: str):
    # ``segtut.load_model`` without importing torch when ``segtut`` itself is imported.
    if name == "load_model":
        from segtut.saved_model import load_model

        return load_model
    raise AttributeError(f"module 'segtut' has no attribute {name!r}")
