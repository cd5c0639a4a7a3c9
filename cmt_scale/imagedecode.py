"""Decoding image files to fixed-size ``uint8`` arrays, in worker processes that import no torch.

A module of its own, outside ``cmt_scale.proxy`` (whose import brings torch), so that a decode worker
starts in a fraction of a second and holds tens of megabytes. Decoding small images is bound by Python
overhead, not by Pillow's C code, so threads do not scale (measured: 1.0x with 2 threads on 2 cores);
processes do. Forked ones would copy the pages of the trainer's Python heap they touch (measured: about
0.5 GiB per worker beside a torch process), and multiprocessing's spawn and forkserver re-run the user's
main script in every worker (a script without a ``__main__`` guard would then recurse). So each worker
is ``python -m cmt_scale.imagedecode``: it writes its rows straight into the ``.npy`` file the caller
memory-maps (no pixels are pickled) and reports progress and unreadable files as JSON lines.

The resize and centre crop are torchvision's ``Resize(size)`` and ``CenterCrop(size)`` on a PIL image,
restated with Pillow alone (same output size rule, bilinear filter and crop offsets), so a decoded image
equals what the streaming path's timm transform sees.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

__all__ = ["decode_rows", "load_rgb", "resize_center_crop"]

_UNREADABLE = (OSError, ValueError, SyntaxError)  # PIL's UnidentifiedImageError is an OSError


def load_rgb(path: str):
    """The image at ``path`` as RGB PIL, or the reason it cannot be read (a truncated or foreign file)."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except _UNREADABLE as err:
        return f"{type(err).__name__}: {err}"


def resize_center_crop(image, size: int) -> np.ndarray:
    """``image`` (PIL) with its shorter side resized to ``size`` (bilinear), centre-cropped to a square, as
    a C x H x W ``uint8`` array: torchvision's ``Resize(size)`` then ``CenterCrop(size)``."""
    from PIL import Image

    width, height = image.size
    short, long = (width, height) if width <= height else (height, width)
    new_long = int(size * long / short)
    new_w, new_h = (size, new_long) if width <= height else (new_long, size)
    if (new_w, new_h) != (width, height):
        image = image.resize((new_w, new_h), Image.BILINEAR)
    left, top = int(round((new_w - size) / 2.0)), int(round((new_h - size) / 2.0))
    image = image.crop((left, top, left + size, top + size))
    return np.asarray(image, dtype=np.uint8).transpose(2, 0, 1)


def decode_rows(out: np.ndarray, paths: Sequence[str], size: int, start: int, stop: int, report) -> None:
    """Decode ``paths[start:stop]`` into ``out``'s rows ``start:stop``, each image written straight into its
    row (no chunk buffer: a fresh multi-megabyte buffer per chunk is a fresh mapping to fault in, and a
    second copy); an unreadable file leaves its row zero. ``report(message)`` gets ``{"done": n}`` every 64
    images and ``{"bad": i, "reason": ...}`` for each unreadable file."""
    done = 0
    for i in range(start, stop):
        image = load_rgb(paths[i])
        if isinstance(image, str):
            out[i] = 0
            report({"bad": i, "reason": image})
        else:
            out[i] = resize_center_crop(image, size)
        done += 1
        if done == 64 or i == stop - 1:
            report({"done": done})
            done = 0


def main(argv: Sequence[str] | None = None) -> int:
    """A decode worker: for each ``--segment OUT PATHS START STOP``, rows ``START:STOP`` of the file list
    ``PATHS`` (one path per line) into the ``.npy`` file ``OUT``. One worker may take rows of several arrays
    (a folder's train and validation splits), so a folder is decoded by one set of workers, not one per
    split; each message it prints names its segment."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--segment", nargs=4, action="append", required=True,
                        metavar=("OUT", "PATHS", "START", "STOP"))
    parser.add_argument("--size", type=int, required=True)
    args = parser.parse_args(argv)
    for number, (out_file, listing, start, stop) in enumerate(args.segment):
        paths = Path(listing).read_text(encoding="utf-8").split("\n")

        def report(message: dict, number: int = number) -> None:
            print(json.dumps({**message, "segment": number}), flush=True)

        # no msync at the end: the caller maps the same page cache, and a synchronous write-back here is disk
        # time both workers would wait for at once (measured: about 0.9 s per GB, the whole gap to 1.8x)
        decode_rows(np.load(out_file, mmap_mode="r+"), paths, args.size, int(start), int(stop), report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
