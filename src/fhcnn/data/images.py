"""Image sets for the autoencoder: small in-memory collections ``(N, C, H, W)`` in ``[0, 1]``.

Sources:

* :func:`load_digits` -- the 1797 8x8 handwritten digits that ship with scikit-learn,
  zero-padded (centred) to 16x16 so the wavelet transforms can halve them several times.
* :func:`load_lfw` -- the 200 25x25 grey faces of the LFW subset that ships with
  scikit-image (``skimage.data.lfw_subset()``; no download), resized to 32x32.
* :func:`load_mnist_idx` -- MNIST-style IDX files (``.gz`` or raw), the 28x28 images
  zero-padded to 32x32 (the paper's size); labels are read from the matching
  ``*labels-idx1-ubyte*`` file when it is present. :func:`read_idx` validates the magic number.
* :func:`load_image_folder` -- a folder of images (PNG/JPEG/BMP/TIFF/WEBP): all of one size,
  or with ``size`` given, CelebA-style centre-cropped to a square (``crop`` pixels, or the
  largest centred square) and resized to ``size x size``.

Images are kept as ``uint8`` (IDX, folders) or ``float32`` (digits, LFW);
:meth:`ImageSet.batch` returns ``float32`` in ``[0, 1]``.
"""

from __future__ import annotations

import gzip
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Sequence, get_args

import numpy as np
import torch
from torch import Tensor

from ..errors import InputError
from ..options import IMAGE_SUFFIXES

__all__ = ["Dataset", "DATASETS", "NATIVE_SIDES", "ImageSet", "load_digits", "load_lfw", "read_idx", "idx_image_shape",
           "load_mnist_idx",
           "load_image_folder", "load_dataset", "fit_to_size", "read_image", "resize_square", "center_square",
           "DATASETS"]

#: Image datasets of the autoencoder (:func:`load_dataset`).
Dataset = Literal["digits", "lfw", "mnist-idx", "folder"]
DATASETS: tuple[str, ...] = get_args(Dataset)

#: The side of the images of the data sets that :func:`fit_to_size` brings to the model's size
#: (zero-padded, centred): the 8x8 digits, MNIST's 28x28 IDX images (an IDX file's own may be
#: of any size: :func:`idx_image_shape`).
NATIVE_SIDES: dict[str, int] = {"digits": 8, "mnist-idx": 28}


# IDX type codes (third byte of the magic number) -> numpy big-endian dtype
_IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


@dataclass
class ImageSet:
    """An in-memory image collection.

    Attributes:
        images: ``(N, C, H, W)``, ``uint8`` (0..255) or ``float32`` (0..1).
        labels: ``(N,)`` int64 class labels, or ``None``.
        name: a short description (e.g. ``"digits"``).
        files: source file per image (folders), or ``None``.
    """

    images: Tensor
    labels: Tensor | None = None
    name: str = "images"
    files: list[str] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.images.ndim != 4:
            raise ValueError(f"images must be (N, C, H, W), got {tuple(self.images.shape)}")
        if self.labels is not None and len(self.labels) != len(self.images):
            raise ValueError(f"{len(self.labels)} labels for {len(self.images)} images")

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def channels(self) -> int:
        return int(self.images.shape[1])

    @property
    def size(self) -> tuple[int, int]:
        """``(H, W)``."""
        return int(self.images.shape[2]), int(self.images.shape[3])

    def batch(self, index: Tensor | Sequence[int] | slice | None = None) -> Tensor:
        """Images ``index`` as ``float32`` in ``[0, 1]``, ``(n, C, H, W)``."""
        x = self.images if index is None else self.images[index]
        if x.dtype == torch.uint8:
            return x.float().div_(255.0)
        return x.float()

    def subset(self, index: Tensor | Sequence[int] | slice, name: str | None = None) -> "ImageSet":
        """A new set holding ``index`` (a view where possible)."""
        if isinstance(index, slice):
            files = self.files[index] if self.files is not None else None
        else:
            idx = torch.as_tensor(index, dtype=torch.long)
            files = [self.files[i] for i in idx.tolist()] if self.files is not None else None
            index = idx
        return ImageSet(self.images[index], None if self.labels is None else self.labels[index],
                        name or self.name, files)

    def split(self, n_eval: int | float, seed: int = 0, shuffle: bool = True
              ) -> tuple["ImageSet", "ImageSet"]:
        """``(train, eval)``: ``n_eval`` images (or that fraction) held out.

        With ``shuffle`` the held-out images are a seeded random choice, else the last ones.
        """
        n = len(self)
        k = int(round(n * n_eval)) if isinstance(n_eval, float) and n_eval < 1 else int(n_eval)
        if not 0 <= k < n:
            raise ValueError(f"cannot hold out {k} of {n} images")
        order = (torch.randperm(n, generator=torch.Generator().manual_seed(seed)) if shuffle
                 else torch.arange(n))
        return self.subset(order[: n - k].sort().values), self.subset(order[n - k:].sort().values)


def _pad_center(x: Tensor, size: int) -> Tensor:
    """Zero-pad ``(N, C, h, w)`` (centred) to ``(N, C, size, size)``."""
    h, w = x.shape[-2:]
    top, left = (size - h) // 2, (size - w) // 2
    out = torch.zeros(*x.shape[:-2], size, size, dtype=x.dtype)
    out[..., top:top + h, left:left + w] = x
    return out


def fit_to_size(x: Tensor, size: int) -> Tensor:
    """``(N, C, h, w)`` images brought to ``(N, C, size, size)`` as :func:`load_digits` and
    :func:`load_mnist_idx` bring theirs: zero-padded (centred) when they fit, else resized
    (bilinear, antialiased; ``uint8`` stays ``uint8``, rounded)."""
    if size >= max(x.shape[-2:]):
        return _pad_center(x, size)
    if x.dtype == torch.uint8:
        return (_resize(x.float() / 255.0, size) * 255).round().to(torch.uint8)
    return _resize(x, size)


def _resize(x: Tensor, size: int) -> Tensor:
    """Bilinear (antialiased) resize of float ``(N, C, h, w)`` to ``size x size``."""
    return torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear",
                                           align_corners=False, antialias=True).clamp_(0, 1)


def _check_size(nbytes: int, what: str) -> None:
    from ..resources import check_memory

    check_memory(nbytes, what, "data.size / --resize")


# --------------------------------------------------------------------- packaged data sets
def load_digits(size: int = 16) -> ImageSet:
    """The scikit-learn 8x8 digits (1797, values 0..16 scaled to [0, 1]), zero-padded to
    ``size x size`` (centred; ``size >= 8``). Labels 0..9."""
    try:
        from sklearn.datasets import load_digits as _sk_digits
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise InputError("the digits data set needs scikit-learn: pip install 'fhcnn[io]'") from e
    if size < 8:
        raise InputError(f"digits are 8x8; size must be >= 8, got {size}")
    _check_size(1797 * size * size * 4, f"the 1797 digits padded to {size}x{size}")
    d = _sk_digits()
    x = torch.tensor(d.images, dtype=torch.float32)[:, None] / 16.0
    return ImageSet(fit_to_size(x, size), torch.tensor(d.target, dtype=torch.long), "digits")


def load_lfw(size: int = 32) -> ImageSet:
    """The 200 grey 25x25 LFW faces shipped with scikit-image, resized to ``size x size``.

    (The first 100 are faces, the last 100 non-face patches in ``skimage.data.lfw_subset``;
    all are used as images here.)
    """
    try:
        from skimage.data import lfw_subset
    except ImportError as e:  # pragma: no cover
        raise InputError("the lfw data set needs scikit-image: pip install 'fhcnn[io]'") from e
    _check_size(200 * size * size * 4, f"the 200 LFW faces resized to {size}x{size}")
    x = torch.tensor(np.asarray(lfw_subset(), dtype=np.float32))[:, None]
    return ImageSet(_resize(x, size) if size != x.shape[-1] else x, None, "lfw")


# ---------------------------------------------------------------------------- IDX (MNIST)
def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (``.gz`` or raw): magic ``0x0000TTDD`` (``TT`` type, ``DD`` number of
    dimensions), ``DD`` big-endian int32 sizes, then the data.

    Raises:
        InputError: the file is missing, not IDX (wrong magic), too short/long, has negative
            sizes, or holds NaN or infinite values.
    """
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: no such file")
    try:
        raw = gzip.decompress(p.read_bytes()) if _is_gzip(p) else p.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise InputError(f"{p}: cannot read it as a gzip file ({e})") from None
    shape, dtype, head = _idx_header(raw, p)
    need = head + int(np.prod(shape)) * dtype.itemsize
    if len(raw) != need:
        raise InputError(f"{p}: IDX data has {len(raw) - head} bytes, but the header "
                         f"{shape} of {dtype.name} needs {need - head}")
    out = np.frombuffer(raw, dtype=dtype, offset=head).reshape(shape).astype(dtype.newbyteorder("="))
    if out.dtype.kind == "f" and not np.isfinite(out).all():
        bad = ~np.isfinite(out)
        raise InputError(f"{p}: holds NaN or infinite values ({int(bad.sum()):,}, one at index "
                         f"{tuple(int(i) for i in np.argwhere(bad)[0])}): fill or remove them first")
    return out


def _idx_header(raw: bytes, p: Path) -> tuple[tuple[int, ...], np.dtype, int]:
    """The shape, the (big-endian) dtype and the header's length of the IDX file ``p`` that
    begins with ``raw`` (its header at least).

    Raises:
        InputError: not IDX (wrong magic), the header truncated or giving negative sizes.
    """
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_TYPES or raw[3] < 1:
        magic = raw[:4].hex() if len(raw) >= 4 else raw.hex()
        raise InputError(f"{p}: not an IDX file (magic number 0x{magic}; expected 0x0000TTDD with "
                         f"type TT in {{08,09,0b,0c,0d,0e}} and DD >= 1 dimensions)")
    ndim, dtype = raw[3], np.dtype(_IDX_TYPES[raw[2]])
    head = 4 + 4 * ndim
    if len(raw) < head:
        raise InputError(f"{p}: IDX header truncated ({len(raw)} bytes, {head} needed)")
    shape = tuple(int(v) for v in np.frombuffer(raw[4:head], dtype=">i4"))
    if min(shape) < 0:
        raise InputError(f"{p}: IDX header gives negative sizes {shape}")
    return shape, dtype, head


def idx_image_shape(path: str | Path) -> tuple[int, int]:
    """``(H, W)`` of the images of an IDX file, or of the ``*images-idx3-ubyte[.gz]`` file of a
    folder, as :func:`load_mnist_idx` reads them, from the header alone.

    Raises:
        InputError: as :func:`read_idx` (of the header), or the file holds no ``(N, H, W)`` images.
    """
    p = _idx_images_file(Path(path))
    if not p.is_file():
        raise InputError(f"{p}: no such file")
    try:
        with (gzip.open(p, "rb") if _is_gzip(p) else open(p, "rb")) as f:
            raw = f.read(4 + 4 * 255)  # the longest header there is
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise InputError(f"{p}: cannot read it ({e})") from None
    shape, _, _ = _idx_header(raw, p)
    if len(shape) != 3:
        raise InputError(f"{p}: expected images (N, H, W) in the IDX file, got shape {shape}")
    return shape[1], shape[2]


def _idx_images_file(p: Path) -> Path:
    """``p``, or the ``*images-idx3-ubyte[.gz]`` file of the folder ``p`` (refused without one)."""
    if not p.is_dir():
        return p
    found = _find_idx(p, "images")
    if found is None:
        raise InputError(f"{p}: no '*images-idx3-ubyte[.gz]' file in this folder")
    return found


def _is_gzip(p: Path) -> bool:
    with open(p, "rb") as f:
        return f.read(2) == b"\x1f\x8b"


def _find_idx(folder: Path, kind: str) -> Path | None:
    pat = re.compile(rf"{kind}.*idx{3 if kind == 'images' else 1}.*ubyte(\.gz)?$")
    hits = sorted(f for f in folder.iterdir() if f.is_file() and pat.search(f.name))
    return hits[0] if hits else None


def load_mnist_idx(path: str | Path, size: int = 32, limit: int | None = None) -> ImageSet:
    """MNIST-style images from an IDX file, or a folder holding ``*images-idx3-ubyte[.gz]``.

    The 28x28 images (or those of the file's size) are zero-padded (centred) to ``size x size``
    (``size`` at least their side; smaller sizes are resized: :func:`fit_to_size`). Labels come
    from ``*labels-idx1-ubyte[.gz]`` next to the images (same prefix, e.g. ``t10k-``) when it
    exists and matches in length.

    Args:
        path: the images file or a folder.
        size: output side (default 32, the paper's MNIST size).
        limit: keep only the first ``limit`` images.
    """
    p = _idx_images_file(Path(path))
    arr = read_idx(p)
    if arr.ndim != 3:
        raise InputError(f"{p}: expected images (N, H, W) in the IDX file, got shape {arr.shape}")
    if limit is not None:
        arr = arr[:limit]
    _check_size(len(arr) * size * size * (1 if arr.dtype == np.uint8 else 4),
                f"{len(arr)} IDX images at {size}x{size}")
    if arr.dtype != np.uint8 and arr.size and arr.min() < 0:  # scaled by the largest value: no sign
        raise InputError(f"{p}: IDX images of {arr.dtype} must be >= 0 (found {arr.min():g}); they are "
                         f"divided by their largest value")
    x = torch.from_numpy(np.ascontiguousarray(arr))
    if x.dtype != torch.uint8:
        x = (x.float() / max(float(x.max()), 1.0)).clamp(0, 1)
    x = fit_to_size(x[:, None], size)
    labels = None
    prefix = p.name.split("images")[0]
    lab = next((f for f in sorted(p.parent.glob(prefix + "labels-idx1-ubyte*"))), None)
    if lab is not None:
        try:
            y = read_idx(lab)
            if y.ndim == 1 and len(y) >= len(x):
                labels = torch.from_numpy(y[: len(x)].astype(np.int64))
        except InputError:
            labels = None
    return ImageSet(x, labels, f"mnist-idx:{p.name}")


# ------------------------------------------------------------------------- image folders
_GREY_MODES = ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F")


def _high_grey(im: object, p: Path) -> np.ndarray:
    """A 16-bit, 32-bit or float grey image as float32 in [0, 1]: 16-bit (and 32-bit integer
    images whose values fit 16 bits) divided by 65535, float images kept if already in [0, 1]."""
    a = np.asarray(im)
    if a.dtype.kind == "f":
        if not np.isfinite(a).all():
            raise InputError(f"{p}: holds NaN or infinite values ({int((~np.isfinite(a)).sum()):,}): fill or "
                             f"remove them first")
        if a.min() < 0 or a.max() > 1:
            raise InputError(f"{p}: a floating-point image must hold values in [0, 1] "
                             f"(found {np.nanmin(a):g}..{np.nanmax(a):g})")
        return a.astype(np.float32)
    if a.min() < 0 or a.max() > 65535:
        raise InputError(f"{p}: a {a.dtype} image with values {a.min()}..{a.max()}; only 8- and "
                         f"16-bit images (0..65535) are read")
    return (a.astype(np.float32) / 65535.0).astype(np.float32)


def read_image(path: str | Path, mode: Literal["L", "RGB"] | None = None) -> np.ndarray:
    """One image as ``(H, W)`` (grey) or ``(H, W, 3)`` (RGB), converted to ``mode`` if given,
    upright by its EXIF orientation: ``uint8`` for 8-bit images, ``float32`` in [0, 1] for
    16-bit grey ones (value / 65535: the depth is kept). A 16-bit colour PNG (which Pillow
    can only read at 8 bits) is refused. Raises :class:`InputError` naming the file."""
    from PIL import UnidentifiedImageError

    from .video import open_image

    p = Path(path)
    try:
        with open_image(p, "image", "save it as 8-bit colour, or as a 16-bit grey PNG or TIFF to keep "
                        "its depth") as im:
            im.load()
            if mode is None:
                mode = "L" if im.mode in _GREY_MODES else "RGB"
            if im.mode.startswith("I") or im.mode == "F":
                grey = _high_grey(im, p)
                return grey if mode == "L" else np.repeat(grey[:, :, None], 3, axis=2)
            return np.asarray(im.convert(mode))
    except FileNotFoundError:
        raise InputError(f"{p}: no such file") from None
    except (UnidentifiedImageError, OSError, ValueError) as e:
        if isinstance(e, InputError):
            raise
        raise InputError(f"{p}: cannot read it as an image ({e})") from None


def resize_square(a: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """An image ``(h, w[, C])`` (``uint8``, or ``float32`` in [0, 1]) resized with Lanczos to
    ``size`` (``int``: a square; ``(H, W)``), in the same type."""
    from PIL import Image

    hw = (size, size) if isinstance(size, int) else tuple(size)
    if a.dtype == np.uint8:
        return np.asarray(Image.fromarray(a).resize((hw[1], hw[0]), Image.Resampling.LANCZOS))
    chans = [a] if a.ndim == 2 else [a[..., c] for c in range(a.shape[2])]
    out = [np.asarray(Image.fromarray(c.astype(np.float32), mode="F").resize(
        (hw[1], hw[0]), Image.Resampling.LANCZOS)) for c in chans]
    r = out[0] if a.ndim == 2 else np.stack(out, -1)
    return np.clip(r, 0.0, 1.0).astype(np.float32)


def center_square(a: np.ndarray, crop: int | None) -> np.ndarray:
    """The centred square of an image ``(h, w[, C])``: ``crop`` pixels a side (at most the
    shorter side), or the largest (``None``). A view."""
    h, w = a.shape[:2]
    side = min(h, w) if crop is None else min(crop, h, w)
    top, left = (h - side) // 2, (w - side) // 2
    return a[top:top + side, left:left + side]


def load_image_folder(path: str | Path, size: int | None = None, crop: int | None = None,
                      color: Literal["auto", "rgb", "gray"] = "auto",
                      limit: int | None = None) -> ImageSet:
    """All images directly in ``path`` (sorted by name).

    Args:
        path: the folder.
        size: ``None``: the images must all have the same size (a clear error otherwise);
            an int: each image is centre-cropped to a square and resized to ``size x size``
            (CelebA-style; e.g. ``crop=140, size=64`` for the aligned 178x218 CelebA faces).
        crop: side of the centred square cut before resizing (default: the largest).
        color: ``"rgb"``, ``"gray"``, or ``"auto"`` (RGB if any image is in colour: grey
            images are then repeated to three channels; never a colour image made grey).
        limit: keep only the first ``limit`` files.

    Raises:
        InputError: missing/empty folder, unreadable image, or mixed sizes without ``size``.
    """
    folder = Path(path)
    if not folder.exists():
        raise InputError(f"{folder}: no such folder")
    if not folder.is_dir():
        raise InputError(f"{folder}: not a folder (expected a folder of images)")
    files = sorted(f for f in folder.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        subdirs = [d.name for d in folder.iterdir() if d.is_dir()][:3]
        hint = f" (it has sub-folders {subdirs}: point at the one holding the images)" if subdirs else ""
        raise InputError(f"{folder}: no images ({', '.join(IMAGE_SUFFIXES)}) in this folder{hint}")
    if limit is not None:
        if limit < 1:
            raise InputError(f"--limit must be >= 1, got {limit}")
        files = files[:limit]
    if color not in ("auto", "rgb", "gray"):
        raise InputError(f"color must be 'auto', 'rgb' or 'gray', got {color!r}")
    if size is not None and size < 1:
        raise InputError(f"size must be >= 1, got {size}")
    if crop is not None and crop < 1:
        raise InputError(f"--crop must be >= 1, got {crop}")
    if size is not None:  # before any image is read: a size that cannot fit is refused now
        _check_size(len(files) * size * size, f"{len(files)} image(s) resized to {size}x{size} "
                    f"at one byte per pixel")
    # "auto": each image as it is, then grey ones repeated to RGB if any image is in colour
    mode: Literal["L", "RGB"] | None = {"rgb": "RGB", "gray": "L"}.get(color)  # type: ignore[assignment]
    out: list[np.ndarray] = []
    first_shape: tuple[int, int] | None = None
    for f in files:
        a = read_image(f, mode)
        if size is None:
            if first_shape is None:
                first_shape = a.shape[:2]
            elif a.shape[:2] != first_shape:
                raise InputError(
                    f"{folder}: images have mixed sizes ({files[0].name} is "
                    f"{first_shape[1]}x{first_shape[0]}, {f.name} is {a.shape[1]}x{a.shape[0]}); "
                    f"pass --resize SIZE to centre-crop and resize them all")
        else:
            if crop is not None and crop > min(a.shape[:2]):
                raise InputError(f"--crop {crop} is larger than the image {f} ({a.shape[1]}x{a.shape[0]})")
            a = resize_square(center_square(a, crop), size)
        out.append(a if a.ndim == 3 else a[:, :, None])
    if any(a.shape[2] == 3 for a in out):
        out = [a if a.shape[2] == 3 else np.repeat(a, 3, axis=2) for a in out]
    if any(a.dtype != np.uint8 for a in out):  # 16-bit images: keep their depth as float
        out = [a.astype(np.float32) / 255.0 if a.dtype == np.uint8 else a for a in out]
    x = torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).contiguous()
    return ImageSet(x, None, f"folder:{folder.name}", [str(f) for f in files])


def load_dataset(kind: str, path: str | Path | None = None, size: int | None = None,
                 crop: int | None = None, limit: int | None = None) -> ImageSet:
    """Dispatch: ``digits`` (size default 16), ``lfw`` (32), ``mnist-idx PATH`` (32),
    ``folder PATH`` (``size`` = resize, ``None`` = keep). ``crop`` is cut only from a folder's
    images before they are resized: given otherwise it would be ignored, and is refused."""
    if kind not in DATASETS:
        raise InputError(f"dataset must be one of {', '.join(DATASETS)}, got {kind!r}")
    if kind in ("mnist-idx", "folder") and not path:
        raise InputError(f"dataset {kind!r} needs a PATH")
    if kind in ("digits", "lfw") and path:
        raise InputError(f"dataset {kind!r} takes no PATH (got {path})")
    if limit is not None and limit < 1:
        raise InputError(f"--limit (data.limit) must be >= 1, got {limit}")
    if size is not None and size < 1:
        raise InputError(f"--resize (data.size) must be >= 1, got {size}")
    if crop is not None and kind != "folder":
        raise InputError(f"--crop (data.crop) {crop} cuts a folder's images only; the {kind} images are never "
                         f"cut: leave it out")
    if crop is not None and size is None:
        raise InputError(f"--crop (data.crop) {crop} is cut only before --resize SIZE (data.size); without it the "
                         f"images would keep their whole size: add --resize {crop} to keep the {crop}x{crop} crops")
    if kind == "digits":
        s = load_digits(size or 16)
    elif kind == "lfw":
        s = load_lfw(size or 32)
    elif kind == "mnist-idx":
        s = load_mnist_idx(path, size or 32, limit)  # type: ignore[arg-type]
        return s
    else:
        return load_image_folder(path, size, crop, limit=limit)  # type: ignore[arg-type]
    return s.subset(slice(0, limit)) if limit is not None else s
