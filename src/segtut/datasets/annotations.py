"""Polygon annotations (labelme, COCO) -> class-id masks, a class map, and back.

People label images with a polygon tool; a segmentation model trains on masks, one class id per
pixel. This module converts between the two:

* :func:`labelme_to_mask`: one labelme JSON file -> a uint8 ``(H, W)`` class-id mask;
* :func:`coco_to_masks`: a COCO "instances" JSON -> one class-id PNG per image plus
  ``class_map.json``;
* :func:`mask_to_labelme`: a class-id mask -> a labelme dict (the reverse, for a demo that
  "draws" polygons from a mask);
* :func:`write_class_map` / :func:`read_class_map`: the class map as JSON.

Rasterisation follows labelme (``labelme/utils/shape.py``): Pillow's ``ImageDraw.polygon`` (fill
and outline, so the pixels the outline passes through belong to the shape), ``rectangle`` for
rectangles and ``ellipse`` for circles. Pillow, not hand-written scan conversion: edge cases
(pixels on the outline, shapes leaving the image) then behave as in the tools people use.

Pixels that no shape covers get the ignore label (255, :data:`segtut.datasets.labels.IGNORE_INDEX`):
nobody said what they are, so no loss or metric should count them. Where shapes overlap, the
order is stated by the caller (``order="file"`` or ``"area"``); the shape drawn last wins.

Masks are uint8, so class ids must lie in ``0..255`` and differ from the ignore label.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence, Union

import numpy as np
from PIL import Image, ImageDraw

from segtut.datasets.labels import IGNORE_INDEX
from segtut.errors import DataError, DataWarning

__all__ = [
    "ORDERS", "LABELME_VERSION", "CLASS_MAP_NAME", "labelme_to_mask", "coco_to_masks",
    "mask_to_labelme", "write_class_map", "read_class_map", "decode_coco_rle",
]

#: Overlap rules: ``"file"``: shapes drawn in file order, the later one wins (labelme's own
#: rule); ``"area"``: larger shapes drawn first, so a smaller shape on top stays visible.
ORDERS = ("file", "area")
#: The labelme file-format version :func:`mask_to_labelme` writes into its dicts.
LABELME_VERSION = "5.4.1"
#: File name of the class map that :func:`coco_to_masks` writes beside the masks.
CLASS_MAP_NAME = "class_map.json"

# labelme shape types that mark an area; "line", "linestrip" and "point" mark no area and are
# skipped (labelme itself would paint them as 10-pixel-wide strokes and 5-pixel dots, inventing
# class pixels that nobody outlined).
_AREA_SHAPES = ("polygon", "rectangle", "circle")
_NON_AREA_SHAPES = ("line", "linestrip", "point", "points")

ClassNames = Union[Sequence[str], Mapping[str, int]]
_MaskFn = Callable[[], np.ndarray]  # returns a bool (H, W) mask of one shape


# --------------------------------------------------------------------------------------------
# small checks shared by the converters
# --------------------------------------------------------------------------------------------

def _check_ignore_index(ignore_index: int) -> int:
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, (int, np.integer)) \
            or not 0 <= int(ignore_index) <= 255:
        raise ValueError(f"ignore_index must be an int in 0..255 (masks are uint8), got "
                         f"{ignore_index!r}; segtut's data sets use {IGNORE_INDEX}.")
    return int(ignore_index)


def _check_order(order: str) -> str:
    if order not in ORDERS:
        raise ValueError(f"order must be one of {ORDERS}, got {order!r}: 'file' draws shapes in "
                         "file order (later wins), 'area' draws larger shapes first.")
    return order


def _name_to_id(class_names: ClassNames, ignore_index: int) -> dict[str, int]:
    """``class_names`` (a sequence: id = index, or a dict name -> id) as a dict name -> id."""
    if isinstance(class_names, str):
        raise ValueError(f"class_names must be a sequence of names or a dict name -> id, not "
                         f"the string {class_names!r}.")
    if isinstance(class_names, Mapping):
        mapping = {str(name): class_id for name, class_id in class_names.items()}
    else:
        names = [str(name) for name in class_names]
        if len(set(names)) != len(names):
            raise ValueError(f"class_names holds a name twice: {names}; each name needs one id "
                             "(pass a dict name -> id to give several names one id).")
        mapping = {name: index for index, name in enumerate(names)}
    if not mapping:
        raise ValueError("class_names is empty; give at least one class name.")
    for name, class_id in mapping.items():
        if isinstance(class_id, bool) or not isinstance(class_id, (int, np.integer)) \
                or not 0 <= int(class_id) <= 255 or int(class_id) == ignore_index:
            raise ValueError(f"class {name!r} has id {class_id!r}; class ids must be ints in "
                             f"0..255 (uint8 masks) other than the ignore label {ignore_index}.")
    return {name: int(class_id) for name, class_id in mapping.items()}


def _load_json(path: Path, what: str) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"{what} file not found: {path}. Check the path (labelme saves one "
                        "JSON beside each image; COCO ships annotations/instances_*.json).") \
            from None
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(f"Cannot read {what} file {path}: {error}. Replace the file.") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise DataError(f"{what} file {path} is not valid JSON ({error}); the file is cut off "
                        "or edited by hand. Save it again from the annotation tool.") from None


def _positive_int(value: Any, field: str, path: Path, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or not float(value).is_integer() or int(value) <= 0:
        raise DataError(f"{what} {path}: field {field!r} is {value!r}, not a positive integer. "
                        "The image size comes from this field; fix it (open the file in the "
                        "annotation tool and save again).")
    return int(value)


def _paint(height: int, width: int, items: Sequence[tuple[int, _MaskFn]], order: str,
           ignore_index: int, first: Sequence[_MaskFn] = ()) -> np.ndarray:
    """Paint shapes into a ``(H, W)`` uint8 mask filled with ``ignore_index``.

    ``items`` are ``(class id, mask function)`` in file order. Each mask is rasterised when it
    is painted and then dropped (for ``order="area"`` twice: once to measure it), so memory
    stays at one image however many shapes there are. Ties in area keep file order (the sort
    is stable). ``first`` masks are painted with ``ignore_index`` before everything else.
    """
    canvas = np.full((height, width), ignore_index, dtype=np.uint8)
    for mask_fn in first:
        canvas[mask_fn()] = ignore_index
    sequence = list(items)
    if order == "area":
        areas = [int(np.count_nonzero(mask_fn())) for _, mask_fn in sequence]
        ranking = sorted(range(len(sequence)), key=lambda i: -areas[i])
        sequence = [sequence[i] for i in ranking]
    for class_id, mask_fn in sequence:
        canvas[mask_fn()] = class_id
    return canvas


def _draw(height: int, width: int, paint: Callable[[ImageDraw.ImageDraw], None]) -> np.ndarray:
    """Run one Pillow drawing call on an empty ``(H, W)`` canvas; the bool mask it painted."""
    image = Image.new("L", (width, height), 0)
    paint(ImageDraw.Draw(image))
    return np.asarray(image) > 0


# --------------------------------------------------------------------------------------------
# labelme
# --------------------------------------------------------------------------------------------

def _labelme_points(shape: Mapping[str, Any], index: int, path: Path) -> np.ndarray:
    """The ``points`` of one shape as a float ``(N, 2)`` array of (x, y), checked."""
    try:
        points = np.asarray(shape.get("points"), dtype=np.float64)
    except (TypeError, ValueError):
        points = np.empty((0, 3))
    if points.ndim != 2 or points.shape[1] != 2 or not np.isfinite(points).all():
        raise DataError(f"labelme file {path}: shape {index} (label {shape.get('label')!r}) has "
                        f"points {shape.get('points')!r}; labelme writes a list of [x, y] "
                        "numbers. Fix or delete this shape in labelme.")
    return points


def _labelme_mask_fn(shape_type: str, points: np.ndarray, height: int,
                     width: int) -> _MaskFn:
    """A function rasterising one area shape the way labelme's ``shape_to_mask`` does."""
    xy = [(float(x), float(y)) for x, y in points]
    if shape_type == "circle":
        (cx, cy), (px, py) = xy
        radius = float(np.hypot(cx - px, cy - py))  # labelme: centre, then a point on the rim
        box = [cx - radius, cy - radius, cx + radius, cy + radius]
        return lambda: _draw(height, width, lambda d: d.ellipse(box, fill=1, outline=1))
    if shape_type == "rectangle":
        (x0, y0), (x1, y1) = xy
        # Two opposite corners in any order; Pillow wants top-left first.
        box = [min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)]
        return lambda: _draw(height, width, lambda d: d.rectangle(box, fill=1, outline=1))
    return lambda: _draw(height, width, lambda d: d.polygon(xy, fill=1, outline=1))


def labelme_to_mask(json_path: Union[str, Path], class_names: ClassNames, *,
                    ignore_index: int = IGNORE_INDEX, order: str = "file",
                    unknown: str = "error") -> np.ndarray:
    """Rasterise one labelme JSON file into a class-id mask.

    Shapes are drawn with Pillow as labelme's ``shapes_to_label`` draws them: ``polygon``
    (3 or more points), ``rectangle`` (two opposite corners), ``circle`` (centre, then a point on
    the rim); fill and outline, so pixels the outline touches belong to the shape. ``line``,
    ``linestrip`` and ``point`` shapes mark no area and are skipped with a :class:`DataWarning`.
    ``group_id`` and ``flags`` (instance and image tags) play no part in a semantic mask.

    A shape that leaves the image is cut at the image border (Pillow draws only the pixels
    inside), with a :class:`DataWarning`; its vertices are not moved onto the border, which
    would bend the edges that cross the image. "Outside" means beyond ``0..imageWidth`` in x or
    ``0..imageHeight`` in y, so points on the far edge (as some tools write them) pass quietly.

    Args:
        json_path: a labelme JSON file (``imageHeight``, ``imageWidth`` and ``shapes``; the
            image itself is not read: the size comes from those two fields).
        class_names: the class of each id: a sequence (``class_names[i]`` has id ``i``) or a
            dict name -> id (several names may share an id).
        ignore_index: value of pixels no shape covers.
        order: where shapes overlap, ``"file"``: later shapes in the file are drawn over
            earlier ones (labelme's own rule, what the annotator saw); ``"area"``: larger
            shapes first, so smaller ones, drawn later, stay visible (a car on a road stays a
            car even if the road was outlined after it). Area is the shape's pixel count; equal
            areas keep file order.
        unknown: a label not in ``class_names``: ``"error"`` raises :class:`DataError`;
            ``"ignore"`` skips those shapes with one :class:`DataWarning` listing the labels.

    Returns:
        uint8 ``(imageHeight, imageWidth)`` class ids, ``ignore_index`` where no shape is.

    Raises:
        DataError: the file is missing or not valid JSON, lacks the image size or shapes, holds
            an unknown label (with ``unknown="error"``), a polygon of fewer than 3 points, a
            rectangle or circle without exactly 2 points, bad point values or an unsupported
            shape type. The message names the file.
        ValueError: a bad argument (``order``, ``unknown``, ``ignore_index``, ``class_names``).
    """
    path = Path(json_path)
    ignore_index = _check_ignore_index(ignore_index)
    order = _check_order(order)
    if unknown not in ("error", "ignore"):
        raise ValueError(f"unknown must be 'error' or 'ignore', got {unknown!r}.")
    name_to_id = _name_to_id(class_names, ignore_index)

    data = _load_json(path, "labelme")
    if not isinstance(data, dict) or not isinstance(data.get("shapes"), list):
        raise DataError(f"{path} is not a labelme file: it needs a top-level object with a "
                        "'shapes' list (plus imageHeight and imageWidth). Check that this is "
                        "the JSON labelme saved for the image, not a COCO or other export.")
    height = _positive_int(data.get("imageHeight"), "imageHeight", path, "labelme file")
    width = _positive_int(data.get("imageWidth"), "imageWidth", path, "labelme file")

    items: list[tuple[int, _MaskFn]] = []
    skipped_types: dict[str, int] = {}
    unknown_labels: dict[str, int] = {}
    outside: list[str] = []
    for index, shape in enumerate(data["shapes"]):
        if not isinstance(shape, dict):
            raise DataError(f"labelme file {path}: shape {index} is {shape!r}, not an object "
                            "with 'label' and 'points'. Save the file again from labelme.")
        label = shape.get("label")
        shape_type = shape.get("shape_type") or "polygon"  # old labelme files omit it
        if shape_type in _NON_AREA_SHAPES:
            skipped_types[shape_type] = skipped_types.get(shape_type, 0) + 1
            continue
        if shape_type not in _AREA_SHAPES:
            raise DataError(f"labelme file {path}: shape {index} (label {label!r}) has "
                            f"shape_type {shape_type!r}; segtut reads {_AREA_SHAPES} (and skips "
                            f"{_NON_AREA_SHAPES}). Redraw it as a polygon in labelme.")
        if label not in name_to_id:
            if unknown == "error":
                raise DataError(f"labelme file {path}: shape {index} has label {label!r}, "
                                f"which is not a known class. Known names: "
                                f"{sorted(name_to_id)}. Fix the label in labelme, add it to "
                                "class_names, or pass unknown='ignore' to skip such shapes.")
            unknown_labels[str(label)] = unknown_labels.get(str(label), 0) + 1
            continue
        points = _labelme_points(shape, index, path)
        if shape_type == "polygon" and len(points) < 3:
            raise DataError(f"labelme file {path}: polygon {index} (label {label!r}) has "
                            f"{len(points)} point(s); a polygon needs at least 3 to enclose an "
                            "area. Redraw it in labelme or delete it.")
        if shape_type in ("rectangle", "circle") and len(points) != 2:
            raise DataError(f"labelme file {path}: {shape_type} {index} (label {label!r}) has "
                            f"{len(points)} points; labelme stores a {shape_type} as exactly 2. "
                            "Redraw it in labelme.")
        if shape_type == "circle":  # the disc, not its points, must fit in the image
            radius = float(np.hypot(*(points[0] - points[1])))
            extent = np.array([points[0] - radius, points[0] + radius])
        else:
            extent = points
        if (extent.min(axis=0) < 0).any() or extent[:, 0].max() > width \
                or extent[:, 1].max() > height:
            outside.append(f"{index} ({label})")
        items.append((name_to_id[label], _labelme_mask_fn(shape_type, points, height, width)))

    if skipped_types:
        warnings.warn(f"labelme file {path}: skipped {skipped_types} shape(s): lines and points "
                      "mark no area, so they give no class pixels. Draw polygons to label "
                      "areas.", DataWarning, stacklevel=2)
    if unknown_labels:
        warnings.warn(f"labelme file {path}: skipped shapes with labels not in class_names "
                      f"{unknown_labels} (unknown='ignore'); their pixels stay unlabelled "
                      f"({ignore_index}) unless other shapes cover them.", DataWarning,
                      stacklevel=2)
    if outside:
        warnings.warn(f"labelme file {path}: shape(s) {', '.join(outside)} reach outside the "
                      f"{width}x{height} image; they are cut at the image border.",
                      DataWarning, stacklevel=2)
    return _paint(height, width, items, order, ignore_index)


# --------------------------------------------------------------------------------------------
# class map
# --------------------------------------------------------------------------------------------

def write_class_map(path: Union[str, Path], class_names: Union[Sequence[str], Mapping[int, str]],
                    ignore_index: int = IGNORE_INDEX) -> Path:
    """Write a class map as JSON: ``{"classes": {"0": name, ...}, "ignore_index": 255}``.

    Args:
        path: the JSON file to write (its folder is created).
        class_names: a sequence (``class_names[i]`` is class id ``i``) or a dict id -> name.
        ignore_index: the ignore label of the masks; it may not also be a class id.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    ignore_index = _check_ignore_index(ignore_index)
    if isinstance(class_names, Mapping):
        classes = {int(class_id): str(name) for class_id, name in class_names.items()}
    else:
        classes = {index: str(name) for index, name in enumerate(class_names)}
    if ignore_index in classes:
        raise ValueError(f"ignore_index {ignore_index} is also the id of class "
                         f"{classes[ignore_index]!r}; pick an ignore label no class uses.")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"classes": {str(k): classes[k] for k in sorted(classes)},
               "ignore_index": ignore_index}
    path.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    return path


def read_class_map(path: Union[str, Path]) -> tuple[dict[int, str], int]:
    """Read a class map written by :func:`write_class_map`.

    Returns:
        ``(classes, ignore_index)``: a dict class id -> name (ids ascending) and the ignore
        label. For contiguous ids, ``tuple(classes.values())`` is the data set's
        ``class_names``.

    Raises:
        DataError: the file is missing, not JSON or not in that layout (the message names it).
    """
    path = Path(path)
    data = _load_json(path, "class map")
    try:
        classes = {int(k): str(v) for k, v in data["classes"].items()}
        ignore_index = _check_ignore_index(data["ignore_index"])
    except (TypeError, KeyError, ValueError, AttributeError) as error:
        raise DataError(f"Class map {path} is not in segtut's layout "
                        '{"classes": {"0": "name", ...}, "ignore_index": 255} '
                        f"({type(error).__name__}: {error}). Write it with "
                        "segtut.datasets.annotations.write_class_map.") from None
    return dict(sorted(classes.items())), ignore_index


# --------------------------------------------------------------------------------------------
# COCO
# --------------------------------------------------------------------------------------------

def _rle_string_to_counts(counts: str) -> list[int]:
    """Decode the COCO API's compressed RLE string (its ``rleFrString``) into run lengths.

    Each run length is written in 5-bit groups, least significant first, one character per
    group (character code minus 48); bit 0x20 of a character says another group follows, and
    bit 0x10 of the last group is the sign. From the fourth run on, the value stored is the
    difference to the run two places back (runs alternate 0s and 1s, so that one is similar).
    """
    runs: list[int] = []
    position = 0
    while position < len(counts):
        value, shift, more = 0, 0, True
        while more:
            if position >= len(counts):
                raise ValueError("the string ends in the middle of a number")
            group = ord(counts[position]) - 48
            if not 0 <= group < 64:
                raise ValueError(f"character {counts[position]!r} is not an RLE digit")
            value |= (group & 0x1F) << shift
            more = bool(group & 0x20)
            position += 1
            shift += 5
            if not more and group & 0x10:
                value -= 1 << shift  # sign-extend: the number is negative
        if len(runs) > 2:
            value += runs[-2]
        runs.append(value)
    return runs


def decode_coco_rle(rle: Mapping[str, Any]) -> np.ndarray:
    """Decode a COCO run-length encoding into a bool ``(h, w)`` mask.

    ``rle["counts"]`` alternates run lengths of 0s and 1s (starting with 0s) over the pixels in
    column-major order (down the first column, then the next), as the COCO API defines it;
    ``rle["size"]`` is ``[h, w]``. ``counts`` may be a list (uncompressed, as COCO writes crowd
    regions) or the API's compressed string.

    Raises:
        ValueError: the runs do not add up to ``h * w``, or a bad size or string.
    """
    height, width = (int(v) for v in rle["size"])
    counts = rle["counts"]
    if isinstance(counts, bytes):
        counts = counts.decode("ascii")
    runs = np.asarray(_rle_string_to_counts(counts) if isinstance(counts, str) else counts,
                      dtype=np.int64)
    if runs.ndim != 1 or (runs < 0).any() or int(runs.sum()) != height * width:
        raise ValueError(f"the runs add up to {int(runs.sum()) if runs.ndim == 1 else '?'} "
                         f"pixels, but size {height}x{width} has {height * width}")
    values = np.arange(len(runs)) % 2 == 1  # runs alternate 0, 1, 0, ...
    flat = np.repeat(values, runs)
    return flat.reshape((height, width), order="F")  # column-major, as COCO stores it


def _coco_mask_fn(segmentation: Any, height: int, width: int, where: str,
                  path: Path) -> Optional[_MaskFn]:
    """A function rasterising one COCO segmentation, or None when it covers no pixels."""
    if isinstance(segmentation, dict):
        size = segmentation.get("size")
        if not isinstance(size, (list, tuple)) or [int(v) for v in size] != [height, width]:
            raise DataError(f"COCO file {path}: {where} has an RLE of size {size!r}, but the "
                            f"image is {height}x{width} ([height, width]). The annotation "
                            "belongs to another image or the file is corrupt.")
        if "counts" not in segmentation:
            raise DataError(f"COCO file {path}: {where} has an RLE without 'counts'.")

        def rle_mask() -> np.ndarray:
            try:
                return decode_coco_rle(segmentation)
            except (ValueError, TypeError, KeyError) as error:
                raise DataError(f"COCO file {path}: cannot decode the RLE of {where} ({error}). "
                                "The file is corrupt; if another tool wrote it, decode it with "
                                "pycocotools (pip install pycocotools; "
                                "pycocotools.mask.decode) to compare.") from None
        rle_mask()  # decode once now, so a corrupt RLE stops the run before files are written
        return rle_mask
    if not isinstance(segmentation, list):
        raise DataError(f"COCO file {path}: {where} has segmentation {type(segmentation)}; "
                        "COCO uses a list of polygons [[x1, y1, x2, y2, ...], ...] or an RLE "
                        "{'counts': ..., 'size': [h, w]}.")
    polygons = []
    for polygon in segmentation:
        try:
            coords = np.asarray(polygon, dtype=np.float64).reshape(-1, 2)
        except (TypeError, ValueError):
            raise DataError(f"COCO file {path}: {where} has a polygon {polygon!r} that is not "
                            "a flat list of x, y numbers.") from None
        if len(coords) < 3:
            # Real COCO files hold a few such slivers; they enclose nothing, so skip them.
            warnings.warn(f"COCO file {path}: {where} has a polygon of {len(coords)} point(s); "
                          "it encloses no area and is skipped.", DataWarning, stacklevel=3)
            continue
        polygons.append([(float(x), float(y)) for x, y in coords])
    if not polygons:
        return None

    def draw_all(draw: ImageDraw.ImageDraw) -> None:
        for xy in polygons:  # the parts of one object (split by occlusion): their union
            draw.polygon(xy, fill=1, outline=1)
    return lambda: _draw(height, width, draw_all)


def coco_to_masks(annotation_json: Union[str, Path], out_dir: Union[str, Path], *,
                  category_ids: Optional[Mapping[int, int]] = None,
                  ignore_index: int = IGNORE_INDEX, order: str = "area") -> dict[int, str]:
    """Convert a COCO instances JSON into one class-id PNG per image and ``class_map.json``.

    Every image in ``images`` gets ``out_dir/<stem of file_name>.png``: a single-channel uint8
    PNG of class ids, ``ignore_index`` where no annotation is (COCO outlines objects; it does not
    say what the rest of the picture is, so those pixels are not "background"). Polygons are
    drawn with Pillow's ``ImageDraw.polygon``; RLE segmentations (``{"counts", "size"}``) are
    decoded column-major as the COCO API defines, both uncompressed (counts a list) and
    compressed (counts a string, the COCO API's ``rleFrString`` format).

    Crowd annotations (``iscrowd=1``: a group of objects outlined together) become
    ``ignore_index``: they are painted first, so an individual object annotated inside a crowd
    keeps its class.

    Args:
        annotation_json: COCO JSON with ``images`` [{id, file_name, height, width}],
            ``annotations`` [{image_id, category_id, segmentation, iscrowd}] and
            ``categories`` [{id, name}].
        out_dir: folder for the PNGs and ``class_map.json`` (created).
        category_ids: COCO category id -> class id. ``None``: contiguous ids ``0..K-1`` in
            order of category id (COCO's ids are sparse: 1, 2, ..., 90 for 80 classes).
            A dict may map several categories to one class (named ``"a/b"``) and may leave
            categories out: their annotations are skipped with a :class:`DataWarning`.
        ignore_index: value of pixels no (non-crowd) annotation covers and of crowd regions.
        order: where instances overlap, ``"area"`` (default): larger first, smaller drawn on
            top (a person in front of a bus stays visible); ``"file"``: annotation order in
            the file, later wins. Area is the rasterised pixel count.

    Returns:
        The class map written to ``out_dir/class_map.json``: a dict class id -> name (see
        :func:`read_class_map`).

    Raises:
        DataError: the file is missing or not COCO, an annotation refers to an unknown image
            or category, an RLE does not fit its image, or two images share a file stem. The
            message names the file.
        ValueError: a bad argument (``order``, ``ignore_index``, ``category_ids``).
    """
    path = Path(annotation_json)
    out_dir = Path(out_dir)
    ignore_index = _check_ignore_index(ignore_index)
    order = _check_order(order)

    data = _load_json(path, "COCO annotation")
    if not isinstance(data, dict) or not all(isinstance(data.get(key), list)
                                             for key in ("images", "annotations", "categories")):
        raise DataError(f"{path} is not a COCO instances file: it needs top-level lists "
                        "'images', 'annotations' and 'categories' (a COCO 'instances_*.json'; "
                        "captions or keypoint-only files will not do).")
    try:
        categories = {int(c["id"]): str(c["name"]) for c in data["categories"]}
        images = [(int(im["id"]), str(im["file_name"]), int(im["height"]), int(im["width"]))
                  for im in data["images"]]
    except (KeyError, TypeError, ValueError) as error:
        raise DataError(f"COCO file {path}: a category lacks id/name or an image lacks "
                        f"id/file_name/height/width ({type(error).__name__}: {error}). "
                        "Check the export settings of the tool that wrote it.") from None

    if category_ids is None:
        category_ids = {cat: index for index, cat in enumerate(sorted(categories))}
    else:
        category_ids = {int(k): v for k, v in category_ids.items()}
        strays = sorted(set(category_ids) - set(categories))
        if strays:
            raise ValueError(f"category_ids names COCO categories {strays} that {path} does not "
                             f"define; its categories are {categories}.")
    names_by_id: dict[int, list[str]] = {}
    for cat in sorted(category_ids):
        class_id = category_ids[cat]
        if isinstance(class_id, bool) or not isinstance(class_id, (int, np.integer)) \
                or not 0 <= int(class_id) <= 255 or int(class_id) == ignore_index:
            raise ValueError(f"category {cat} ({categories[cat]!r}) maps to class id "
                             f"{class_id!r}; class ids must be ints in 0..255 other than the "
                             f"ignore label {ignore_index} (masks are uint8). With more than "
                             "255 categories, pass category_ids choosing the ones you need.")
        names_by_id.setdefault(int(class_id), []).append(categories[cat])
    class_map = {class_id: "/".join(names) for class_id, names in sorted(names_by_id.items())}

    stems: dict[str, str] = {}
    by_image: dict[int, list[dict]] = {image_id: [] for image_id, *_ in images}
    for image_id, file_name, _, _ in images:
        stem = Path(file_name).stem
        if stem in stems:
            raise DataError(f"COCO file {path}: images {stems[stem]!r} and {file_name!r} both "
                            f"would be written as {stem}.png. Give the images distinct names.")
        stems[stem] = file_name
    skipped: dict[str, int] = {}
    for number, ann in enumerate(data["annotations"]):
        if not isinstance(ann, dict) or "segmentation" not in ann:
            raise DataError(f"COCO file {path}: annotation {number} has no 'segmentation'; "
                            "segtut needs instance outlines (polygons or RLE), not boxes only.")
        if ann.get("image_id") not in by_image:
            raise DataError(f"COCO file {path}: annotation {ann.get('id', number)} refers to "
                            f"image_id {ann.get('image_id')!r}, which 'images' does not list. "
                            "The file is incomplete; export it again.")
        if ann.get("category_id") not in categories:
            raise DataError(f"COCO file {path}: annotation {ann.get('id', number)} has "
                            f"category_id {ann.get('category_id')!r}, not among the categories "
                            f"{categories}. Export the file again.")
        if ann["category_id"] not in category_ids and not ann.get("iscrowd"):
            name = categories[ann["category_id"]]
            skipped[name] = skipped.get(name, 0) + 1
            continue
        by_image[ann["image_id"]].append(ann)
    if skipped:
        warnings.warn(f"COCO file {path}: skipped annotations of categories not in "
                      f"category_ids {skipped}; their pixels stay unlabelled ({ignore_index}).",
                      DataWarning, stacklevel=2)

    # Rasterise everything before writing anything: a bad annotation then leaves no half-written
    # folder behind.
    masks: list[tuple[str, np.ndarray]] = []
    for image_id, file_name, height, width in images:
        crowds: list[_MaskFn] = []
        items: list[tuple[int, _MaskFn]] = []
        for ann in by_image[image_id]:
            where = f"annotation {ann.get('id', '(no id)')} (image {file_name})"
            mask_fn = _coco_mask_fn(ann["segmentation"], height, width, where, path)
            if mask_fn is None:
                continue
            if ann.get("iscrowd"):
                crowds.append(mask_fn)
            else:
                items.append((int(category_ids[ann["category_id"]]), mask_fn))
        masks.append((Path(file_name).stem,
                      _paint(height, width, items, order, ignore_index, first=crowds)))

    out_dir.mkdir(parents=True, exist_ok=True)
    for stem, mask in masks:
        Image.fromarray(mask).save(out_dir / f"{stem}.png")  # uint8 (H, W) -> mode L PNG
    write_class_map(out_dir / CLASS_MAP_NAME, class_map, ignore_index)
    return class_map


# --------------------------------------------------------------------------------------------
# mask -> labelme (the reverse)
# --------------------------------------------------------------------------------------------

def _douglas_peucker(points: np.ndarray, tolerance: float) -> np.ndarray:
    """Keep the points of an open polyline ``(N, 2)`` that are needed within ``tolerance``."""
    keep = np.zeros(len(points), dtype=bool)
    keep[[0, -1]] = True
    stack = [(0, len(points) - 1)]
    while stack:
        start, end = stack.pop()
        if end <= start + 1:
            continue
        a, b = points[start], points[end]
        inner = points[start + 1:end]
        direction = b - a
        length = float(np.hypot(*direction))
        if length == 0.0:  # a closed ring: distance to the point itself
            distance = np.hypot(*(inner - a).T)
        else:  # distance to the line through a and b
            distance = np.abs(direction[0] * (inner[:, 1] - a[1])
                              - direction[1] * (inner[:, 0] - a[0])) / length
        farthest = int(np.argmax(distance))
        if distance[farthest] > tolerance:
            middle = start + 1 + farthest
            keep[middle] = True
            stack += [(start, middle), (middle, end)]
    return points[keep]


def _outer_rings(binary: np.ndarray) -> list[np.ndarray]:
    """Outlines of the regions of a bool ``(H, W)`` mask, as polygons through the centres of
    their boundary pixels: a list of int ``(N, 2)`` arrays of (x, y), holes ignored.

    contourpy traces the 0.5 level of the mask (padded with a zero frame so every outline
    closes); on a 0/1 grid each vertex is the midpoint between an inside and an outside pixel.
    Each vertex is moved onto the centre of its inside pixel: Pillow fills a polygon together
    with the pixels its outline passes through, so a polygon through the boundary pixels'
    centres gives back those pixels, where the half-pixel outline would grow the region.
    """
    import contourpy  # installed with matplotlib; imported here so reading masks does not need it

    padded = np.pad(binary, 1).astype(np.float64)
    generator = contourpy.contour_generator(z=padded, fill_type="OuterOffset")
    rings = []
    for points, offsets in zip(*generator.filled(0.5, 1.5)):
        for start, end in zip(offsets[:-1], offsets[1:]):
            if start != offsets[0]:
                continue  # a hole: polygon annotation without holes fills it
            ring = np.asarray(points[start:end])
            x, y = ring[:, 0], ring[:, 1]
            x_edge = np.abs(x - np.rint(x)) > 1e-6  # vertex between two pixels of one row
            xs, ys = np.rint(x).astype(int), np.rint(y).astype(int)
            low_x = np.floor(x).astype(int)
            inside_low = padded[np.rint(y).astype(int), low_x] > 0.5
            xs[x_edge] = np.where(inside_low, low_x, low_x + 1)[x_edge]
            y_edge = ~x_edge & (np.abs(y - np.rint(y)) > 1e-6)
            low_y = np.floor(y).astype(int)
            inside_low = padded[low_y, np.rint(x).astype(int)] > 0.5
            ys[y_edge] = np.where(inside_low, low_y, low_y + 1)[y_edge]
            snapped = np.stack([xs, ys], axis=1) - 1  # undo the padding
            rings.append(snapped)
    return rings


def _dedupe(ring: np.ndarray) -> np.ndarray:
    """Drop consecutive repeated points, and the closing point equal to the first."""
    changed = np.ones(len(ring), dtype=bool)
    changed[1:] = (np.diff(ring, axis=0) != 0).any(axis=1)
    ring = ring[changed]
    if len(ring) > 1 and (ring[0] == ring[-1]).all():
        ring = ring[:-1]
    return ring


def mask_to_labelme(mask: Any, class_names: ClassNames, image_path: Union[str, Path], *,
                    ignore_index: int = IGNORE_INDEX, tolerance: float = 1.0) -> dict:
    """Trace a class-id mask into labelme polygons, as if someone had outlined it.

    Every connected region of every class id in the mask (except ``ignore_index``) becomes one
    polygon labelled with the class name. Outlines are traced with contourpy, run through the
    centres of the region's boundary pixels, and are simplified by Douglas-Peucker with
    ``tolerance`` pixels. Shapes are listed largest first, so :func:`labelme_to_mask` reads the
    same picture back with ``order="file"`` or ``order="area"``.

    Limitations (of polygon annotation, not of the tracing): a polygon has no holes, so a region
    with holes comes back filled (the hole takes the region's class unless a smaller shape
    covers it again, and unlabelled holes are lost); regions too small or thin for a polygon
    of 3 points (a pixel, a line of pixels simplified away) are dropped; simplification shifts
    edges by up to ``tolerance`` pixels. For two 40-pixel blobs the round trip keeps IoU > 0.95
    per class (``tests/test_annotations.py`` measures it).

    Args:
        mask: integer ``(H, W)`` array (numpy, or anything ``np.asarray`` takes) of class ids.
        class_names: a sequence (``class_names[i]`` has id ``i``) or a dict name -> id (the
            first name of an id labels its polygons).
        image_path: written to ``imagePath`` (labelme resolves it relative to the JSON file).
        ignore_index: pixels with this value get no polygon (they stay unlabelled).
        tolerance: Douglas-Peucker tolerance in pixels; ``0`` keeps every boundary vertex.

    Returns:
        A labelme dict: ``version``, ``flags``, ``shapes`` (``label``, ``points`` [[x, y], ...],
        ``group_id`` None, ``description``, ``shape_type`` "polygon", ``flags``), ``imagePath``,
        ``imageData`` None, ``imageHeight``, ``imageWidth``; ``json.dump`` it to a ``.json``.

    Raises:
        ValueError: the mask is not 2-D integer or holds ids that ``class_names`` does not name.
    """
    ignore_index = _check_ignore_index(ignore_index)
    array = np.asarray(mask)
    if array.ndim != 2 or array.dtype.kind not in "iub":
        raise ValueError(f"mask must be a 2-D integer array of class ids (H, W), got shape "
                         f"{array.shape} dtype {array.dtype}.")
    id_to_name: dict[int, str] = {}
    for name, class_id in _name_to_id(class_names, ignore_index).items():
        id_to_name.setdefault(class_id, name)
    present = [int(v) for v in np.unique(array) if int(v) != ignore_index]
    stray = sorted(set(present) - set(id_to_name))
    if stray:
        raise ValueError(f"mask for {image_path} holds ids {stray} that class_names does not "
                         f"name (known ids {sorted(id_to_name)}, ignore {ignore_index}).")

    shapes = []
    for class_id in present:
        for ring in _outer_rings(array == class_id):
            ring = _dedupe(ring)
            if tolerance > 0 and len(ring) > 3:
                closed = np.concatenate([ring, ring[:1]]).astype(np.float64)
                ring = _dedupe(_douglas_peucker(closed, float(tolerance)))
            if len(ring) < 3:
                continue  # a dot or a sliver: no polygon
            x, y = ring[:, 0].astype(np.float64), ring[:, 1].astype(np.float64)
            area = 0.5 * abs(float(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))))
            shapes.append((area, {
                "label": id_to_name[class_id], "points": ring.astype(float).tolist(),
                "group_id": None, "description": "", "shape_type": "polygon", "flags": {},
            }))
    shapes.sort(key=lambda item: -item[0])  # largest first: later (smaller) shapes stay on top
    return {
        "version": LABELME_VERSION, "flags": {}, "shapes": [shape for _, shape in shapes],
        "imagePath": Path(image_path).as_posix(), "imageData": None,
        "imageHeight": int(array.shape[0]), "imageWidth": int(array.shape[1]),
    }
