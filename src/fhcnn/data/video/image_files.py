"""Image files in a folder of numbered frames or masks, shared by the frame and mask readers.

The order of a folder's images (by the last number in each name), the DAVIS layout
(``JPEGImages/480p/<seq>``, ``Annotations/480p/<seq>``) found from the dataset root, the checks
that refuse names which would shift, drop or misplace frames or masks, and the opening of one
image file (:func:`open_image`: refused where Pillow would read fewer bits than it holds, or
only the first of several images; turned upright by its EXIF orientation).
"""

from __future__ import annotations

import contextlib
import re
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Sequence

from ...errors import InputError
from ...options import IMAGE_SUFFIXES

if TYPE_CHECKING:
    from PIL import Image


def _number_key(p: Path) -> tuple:
    nums = re.findall(r"\d+", p.stem)
    return (int(nums[-1]) if nums else -1, p.name)


def _image_files(folder: Path, suffixes: Sequence[str] = IMAGE_SUFFIXES) -> list[Path]:
    return sorted((p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in suffixes
                   and not p.name.startswith(".")), key=_number_key)


def _davis_sequence_folder(folder: Path, kind: str) -> Path:
    """A DAVIS root (``JPEGImages/480p/<seq>``) with exactly one sequence -> that folder."""
    base = folder / kind
    if not base.is_dir():
        return folder
    res = [d for d in sorted(base.iterdir()) if d.is_dir()]
    seqs = [s for r in res for s in sorted(r.iterdir()) if s.is_dir()] if res else []
    if len(seqs) == 1:
        return seqs[0]
    if seqs:
        raise InputError(f"{folder} holds {len(seqs)} DAVIS sequences ({', '.join(s.name for s in seqs[:6])}"
                         f"{' ...' if len(seqs) > 6 else ''}); give the sequence folder, e.g. {seqs[0]}")
    return folder


def pil_high_depth(im: "Image.Image") -> str | None:
    """The raw mode (e.g. ``"RGB;16B"``) of an image Pillow would decode to *fewer* bits than
    the file holds (16-bit colour or grey-with-alpha PNGs become 8-bit), else ``None``. Call it
    before the image is loaded."""
    if im.mode.startswith("I") or im.mode == "F":
        return None
    for tile in getattr(im, "tile", None) or []:
        args = tile[3] if len(tile) > 3 else None
        raw = args[0] if isinstance(args, tuple) and args else args
        if isinstance(raw, str) and ";16" in raw:
            return raw
    return None


@contextlib.contextmanager
def open_image(f: Path, what: str, keep_depth: str = "save it as a 16-bit TIFF, a 16-bit grey PNG or "
               "a .npy array to keep its depth") -> Iterator["Image.Image"]:
    """``PIL.Image.open`` that refuses (naming the file, and saying ``keep_depth``: how the
    caller reads it at its depth) an image Pillow would read at fewer bits than it holds, and a
    file of several images (a multi-page TIFF, an animated PNG or GIF: Pillow reads the first
    alone), and turns it upright by its EXIF orientation (as every viewer shows it); the caller
    catches reading errors."""
    from PIL import Image, ImageOps

    with Image.open(f) as im:
        n = int(getattr(im, "n_frames", 1))
        if n > 1:
            raise InputError(f"{what} {f} holds {n} images (pages or animation frames), of which only the "
                             f"first would be read; save each {what} as a file of one image")
        raw = pil_high_depth(im)
        if raw is not None:
            kind = {"RGB": "colour", "RGBA": "colour", "LA": "grey-with-alpha"}.get(raw.split(";")[0], raw)
            raise InputError(f"{what} {f} is a 16-bit {kind} image, which can only be read at 8 "
                             f"bits here; {keep_depth}")
        upright = ImageOps.exif_transpose(im)
        if upright is None or upright is im:
            yield im
        else:
            upright.format = im.format  # a rotated copy: keep what the file is
            yield upright


#: Suffixes of lossy image files (JPEG): never a file of label values.
LOSSY_SUFFIXES = (".jpg", ".jpeg")


@contextlib.contextmanager
def open_label_image(f: Path, what: str, shown: str, save: str) -> Iterator["Image.Image"]:
    """:func:`open_image` for an image of label values (a mask, a label map), refusing a JPEG by
    its name or by its data (lossy compression turns one label value into many): the line names
    ``shown`` and says ``save`` (how to save it instead)."""
    if f.suffix.lower() in LOSSY_SUFFIXES:
        raise InputError(f"{shown} is a JPEG: lossy compression turns one label value into many; {save}")
    with open_image(f, what) as im:
        if im.format == "JPEG":
            raise InputError(f"{shown} holds JPEG data: lossy compression turns one label value into many; {save}")
        yield im


def _check_frame_files(folder: Path, files: list[Path], what: str = "frame") -> None:
    """Refuse a broken link among the images, an unnumbered image beside numbered ones, two
    files with the same number, and names whose other numbers order them otherwise than their
    last number (a time stamp; a copy named ``00003 (1).png``, which would be frame 1's mask):
    each would shift, drop or misplace frames or masks silently."""
    for p in sorted(folder.iterdir()):
        if p.is_symlink() and not p.exists() and p.suffix.lower() in IMAGE_SUFFIXES:
            raise InputError(f"{what} {p} is a broken link (its target does not exist)")
    numbers: dict[int, Path] = {}
    unnumbered = [p for p in files if not re.findall(r"\d+", p.stem)]
    if unnumbered and len(unnumbered) < len(files):
        raise InputError(f"{unnumbered[0]} has no frame number in its name, unlike the other "
                         f"{what}s in {folder}; move it out of the folder")
    if unnumbered and len(files) > 1:
        raise InputError(f"the {what}s in {folder} have no numbers in their names (e.g. "
                         f"{unnumbered[0].name}); name them by frame number (00000.png, ...)")
    for p in files:
        nums = re.findall(r"\d+", p.stem)
        if nums:
            k = int(nums[-1])
            if k in numbers:
                raise InputError(f"{what}s {numbers[k]} and {p} have the same frame number {k}")
            numbers[k] = p
    # frames (and the masks matched to them) go by their last number: other numbers must agree
    by_all = sorted(files, key=lambda p: (tuple(int(n) for n in re.findall(r"\d+", p.stem)), p.name))
    rank = {p: i for i, p in enumerate(by_all)}
    for a, b in zip(files, files[1:]):
        if rank[a] > rank[b]:
            raise InputError(f"{what}s {a.name} and {b.name} in {folder}: {what}s are ordered by the last number "
                             f"in their names ({_number_key(a)[0]} before {_number_key(b)[0]}), but the "
                             f"other numbers order them the other way (e.g. a time stamp, or a copy named "
                             f"'00003 (1)'); name them by frame number (00000.png, ...)")
