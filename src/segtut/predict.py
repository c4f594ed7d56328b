"""Command line: segment images with a saved model.

    python -m segtut.predict runs/unet_camvid street.jpg photos/ --out predictions
    python -m segtut.predict runs/unet_camvid big.png --out predictions --tile 360 480 --flip

CHECKPOINT is a folder written by :func:`segtut.saved_model.save_model` (or its ``model.json``);
a resume checkpoint of :func:`segtut.train.save_checkpoint` works too with ``--architecture``
and ``--options``. For every image, three files are written into ``--out`` (see
:func:`segtut.inference.predict_folder`): ``NAME_mask.png``, ``NAME_labels.png`` and
``NAME_overlay.jpg``.

Exit status: 0 when every image was predicted; 2 with a one-line error (no traceback) when the
checkpoint cannot be loaded, is not what was asked for, the output folder cannot be written, or
any image could not be read (the others are still predicted, and every failure is listed).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Optional, Sequence

#: Exit status for every error the user can fix (argparse uses 2 for usage errors too).
EXIT_ERROR = 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m segtut.predict",
        description="Segment images with a model saved by segtut.saved_model.save_model.")
    parser.add_argument("checkpoint", help="model folder (or its model.json), or a resume "
                        "checkpoint together with --architecture")
    parser.add_argument("inputs", nargs="+", metavar="IMAGE_OR_FOLDER",
                        help="image files and/or folders of images")
    parser.add_argument("--out", required=True, help="output folder (created if needed)")
    parser.add_argument("--tile", nargs=2, type=int, metavar=("H", "W"),
                        help="predict on overlapping H x W tiles (for images larger than the "
                        "training crops)")
    parser.add_argument("--overlap", type=float, default=0.5,
                        help="fraction of a tile shared with its neighbour (default 0.5)")
    parser.add_argument("--flip", action="store_true",
                        help="average with the prediction of the mirrored image")
    parser.add_argument("--input-size", nargs=2, type=int, metavar=("H", "W"),
                        help="resize images to H x W for the model (default: the model card's)")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:1, mps, ...")
    parser.add_argument("--num-classes", type=int,
                        help="fail unless the checkpoint predicts this many classes")
    parser.add_argument("--alpha", type=float, default=0.5, help="overlay colour weight")
    parser.add_argument("--architecture", help="for a resume checkpoint: the build_model name")
    parser.add_argument("--options", default="{}",
                        help='for a resume checkpoint: build_model options as JSON, e.g. '
                        '\'{"base_channels": 16}\'')
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return EXIT_ERROR


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the command line with ``argv`` (default: ``sys.argv[1:]``); returns the exit status."""
    args = build_parser().parse_args(argv)
    # Imported here, after parsing, so that --help and usage errors answer without loading torch.
    from segtut.data import DataError
    from segtut.inference import OutputError, predict_folder
    from segtut.saved_model import ModelFileError, load_model

    try:
        options = json.loads(args.options)
    except json.JSONDecodeError as error:
        return _fail(f"--options is not valid JSON ({error}): {args.options}")
    if not isinstance(options, dict):
        return _fail(f"--options must be a JSON object such as '{{\"base_channels\": 16}}', "
                     f"got {args.options}")
    try:
        saved = load_model(args.checkpoint, device=args.device, architecture=args.architecture,
                           options=options)
    except ModelFileError as error:
        hint = ""
        if args.architecture is None and "architecture=" in str(error):
            hint = " On the command line: --architecture NAME --options '{...}'."
        return _fail(str(error) + hint)
    except (RuntimeError, AssertionError) as error:  # e.g. an unavailable --device
        return _fail(f"cannot use device {args.device!r}: {str(error).splitlines()[0]}")
    card = saved.card
    if args.num_classes is not None and args.num_classes != card.num_classes:
        return _fail(f"{args.checkpoint} predicts {card.num_classes} classes "
                     f"({', '.join(card.class_names[:5])}{', ...' if card.num_classes > 5 else ''}), "
                     f"not --num-classes {args.num_classes}. Use the checkpoint trained for "
                     f"your {args.num_classes} classes.")
    try:
        result = predict_folder(
            saved, args.inputs, args.out, alpha=args.alpha, progress=not args.quiet,
            tile=args.tile, overlap=args.overlap, flip=args.flip,
            input_size=tuple(args.input_size) if args.input_size else None)
    except (OutputError, DataError, ValueError) as error:
        return _fail(str(error))
    print(result.summary())
    if result.failed:
        return _fail(f"{len(result.failed)} input(s) failed: "
                     f"{', '.join(str(p) for p in result.failed)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
