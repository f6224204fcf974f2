"""Reading and checking masks: a folder of PNG masks matched to the frames, or a ``.npy``
``(T, H, W)`` label array, as raw values (:func:`read_masks`, :class:`MaskSet`); the checks that
refuse lossy, antialiased or negative masks and masks that encode objects differently
(:func:`blended_values`, :func:`check_mask_encodings`); raw values to classes ``0..K-1``
(:func:`mask_classes`, :func:`apply_classes`).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Callable, Iterator, Mapping, Sequence

import numpy as np

from ...errors import InputError
from .._npy import load_npy
from .image_files import _check_frame_files, _davis_sequence_folder, _image_files, open_label_image

#: Lossy image formats: never read as masks.


#: Added to the code ``R * 65536 + G * 256 + B`` of every colour but black in an RGB mask, so no
#: colour code is a label index: pure blue (0, 0, 255) would be 255, "void" in masks with several
#: objects, and its object would be dropped from training without a word.
COLOUR_CODE_OFFSET = 1 << 24


def _read_mask_png(f: Path) -> tuple[np.ndarray, str]:
    """``(raw values, kind)``: palette index or grey value (kind ``"index"``; the alpha channel of
    a grey or palette image with alpha is left out), or each RGB colour
    as one value ``R * 65536 + G * 256 + B``, plus :data:`COLOUR_CODE_OFFSET` but for black
    (kind ``"colour"``; black = background = 0)."""
    try:
        with open_label_image(f, "mask", f"mask {f}", "save the masks as PNG") as im:
            if im.mode in ("P", "L", "1", "I", "I;16", "I;16B", "I;16L"):
                return np.asarray(im if im.mode != "1" else im.convert("L")).astype(np.int64), "index"
            if im.mode in ("LA", "PA"):  # grey or palette with alpha: the values are indices
                return np.asarray(im.getchannel(0)).astype(np.int64), "index"
            if im.mode == "F":  # a float grey image (TIFF): whole numbers are indices
                v = np.asarray(im)
                if not (np.isfinite(v).all() and np.array_equal(v, np.round(v))):
                    raise InputError(f"mask {f} holds values that are not whole numbers "
                                     f"(e.g. {v[~(np.isfinite(v) & (v == np.round(v)))][0]:g}); "
                                     f"masks hold label indices")
                return v.astype(np.int64), "index"
            rgb = np.asarray(im.convert("RGB")).astype(np.int64)
    except InputError:
        raise
    except Exception as e:
        raise InputError(f"cannot read mask {f}: {e}") from None
    code = rgb[..., 0] * 65536 + rgb[..., 1] * 256 + rgb[..., 2]
    return np.where(code > 0, code + COLOUR_CODE_OFFSET, 0), "colour"


class MaskSet(Mapping[int, np.ndarray]):
    """``{frame index: (H, W) int64 raw mask values}`` found by :func:`read_masks`, read on
    demand (one file, or one frame of a memory-mapped ``.npy``, per access), with what the one
    checking pass learned of each mask: its image kind (``kinds``: ``"index"`` for
    palette/grey/``.npy`` masks, ``"colour"`` for RGB ones, whose values are colour codes), its
    file (``files``) and its sorted distinct raw values (``distinct``)."""

    def __init__(self) -> None:
        self._read: dict[int, Callable[[], np.ndarray]] = {}
        self.kinds: dict[int, str] = {}
        self.files: dict[int, str] = {}
        self.distinct: dict[int, np.ndarray] = {}

    def add(self, k: int, read: Callable[[], np.ndarray], kind: str, file: str, distinct: np.ndarray) -> None:
        self._read[k], self.kinds[k], self.files[k], self.distinct[k] = read, kind, file, distinct

    def only(self, frames: Sequence[int]) -> MaskSet:
        """The masks of ``frames`` (each must have one)."""
        out = MaskSet()
        for k in frames:
            out.add(k, self._read[k], self.kinds[k], self.files[k], self.distinct[k])
        return out

    def __getitem__(self, k: int) -> np.ndarray:
        return self._read[k]()

    def __iter__(self) -> Iterator[int]:
        return iter(self._read)

    def __len__(self) -> int:
        return len(self._read)


def distinct_values(masks: Mapping[int, np.ndarray], k: int) -> np.ndarray:
    """Sorted distinct raw values of mask ``k`` (from a :class:`MaskSet`'s checking pass, or
    computed)."""
    return masks.distinct[k] if isinstance(masks, MaskSet) else np.unique(masks[k])


def _mask_png_values(f: Path) -> np.ndarray:
    return _read_mask_png(f)[0]


def _npy_mask(a: np.ndarray, i: int, path: Path) -> np.ndarray:
    """Frame ``i`` of a ``(T, H, W)`` mask array as int64 raw values (whole-number floats taken
    as integers, NaN = 255 = unlabelled)."""
    m = np.asarray(a[i])
    if np.issubdtype(m.dtype, np.integer) or np.issubdtype(m.dtype, np.bool_):
        return m.astype(np.int64)
    fin = np.isfinite(m)
    if not np.issubdtype(m.dtype, np.floating) or not np.all(m[fin] == np.round(m[fin])):
        raise InputError(f"masks {path} must hold integer labels, got dtype {a.dtype}")
    return np.where(fin, m, 255).astype(np.int64)


#: A value whose pixels lie this often between their neighbours' values is a blend (below).
_BLEND_SHARE = 0.9


def blended_values(m: np.ndarray, kind: str) -> np.ndarray:
    """The raw values of the ``(H, W)`` mask ``m`` (of image kind ``kind``, see
    :func:`_read_mask_png`) that are blends: at least 90 % of their pixels lie strictly between
    the values of their 4-neighbours (for colour codes: within the neighbours' range in every
    RGB channel and strictly inside it in one), as the pixels on the edges of an antialiased or
    smoothly resized mask do. A value that labels a region has inner pixels, whose neighbours
    hold the value itself; a thin class between two others (a boundary class) is one blend."""
    if m.ndim != 2 or m.size == 0:
        return np.zeros(0, np.int64)
    if kind == "colour":
        code = np.where(m > 0, m - COLOUR_CODE_OFFSET, 0)
        ch = np.stack([code >> 16, (code >> 8) & 255, code & 255], -1)
    else:
        ch = m[..., None]
    p = np.pad(ch, ((1, 1), (1, 1), (0, 0)), mode="edge")
    around = np.stack([p[:-2, 1:-1], p[2:, 1:-1], p[1:-1, :-2], p[1:-1, 2:]])
    lo, hi = around.min(0), around.max(0)
    between = ((lo <= ch) & (ch <= hi)).all(-1) & ((lo < ch) & (ch < hi)).any(-1)
    values, where = np.unique(m, return_inverse=True)
    where = where.ravel()
    share = np.bincount(where, weights=between.ravel(), minlength=len(values)) / np.bincount(
        where, minlength=len(values))
    return values[share >= _BLEND_SHARE]


def read_masks(path: str | Path, frame_names: Sequence[str], frame_size: tuple[int, int] | None = None
               ) -> MaskSet:
    """Find and check the masks: ``{frame index: (H, W) int64 raw mask values}`` (a
    :class:`MaskSet`, read on demand; the checking pass reads one mask at a time).

    A folder's PNGs are matched to frames by name (``00007.png`` <-> frame ``00007``), else by
    the number in the name; only if no mask matches a frame so, and there are as many masks as
    frames, by order. A mask that matches no frame is refused. A ``.npy`` is ``(T, H, W)``
    (memory-mapped; value 255 = unlabelled there is kept and means "not labelled"; a frame
    whose every value is 255 or NaN has no mask).

    Raises:
        InputError: unreadable, no masks, a mask that matches no frame, a size that differs
            from ``frame_size``, a negative value, two or more blended values
            (:func:`blended_values`: an antialiased or smoothly resized mask, each of whose edge
            shades would become a class and whose object value 255 would mean "unlabelled").
    """
    from functools import partial

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"masks not found: {path}")
    t = len(frame_names)
    out = MaskSet()

    def check_size(i: int, m: np.ndarray, kind: str = "index", file: str | None = None) -> np.ndarray:
        """``m``'s sorted distinct values, after checking its size, that none is negative and
        that it is not a blend of hard edges (:func:`blended_values`)."""
        if frame_size is not None and m.shape != tuple(frame_size):
            raise InputError(f"mask of frame {frame_names[i]} in {path} has size {m.shape[0]}x{m.shape[1]}, "
                             f"but the frames are {frame_size[0]}x{frame_size[1]}")
        values = np.unique(m)
        if values.size and values[0] < 0:  # e.g. -1 meant as "unlabelled": it would become a class
            raise InputError(f"mask of frame {frame_names[i]} in {path} holds the negative value "
                             f"{int(values[0])}; mask values are 0 (background), objects > 0 and "
                             f"255 (unlabelled among several objects)")
        blends = blended_values(m, kind)
        if len(blends) >= 2:  # one may be a thin class between two others (a boundary class)
            shown = (", ".join(str(int(v)) for v in blends[:4]) if kind == "index"
                     else ", ".join(f"#{int(v) - COLOUR_CODE_OFFSET:06x}" for v in blends[:4]))
            raise InputError(f"mask {file or f'of frame {frame_names[i]} in {path}'}: {len(blends)} of its "
                             f"{len(values)} values ({shown}{', ...' if len(blends) > 4 else ''}) lie only "
                             f"between other values on the edges of regions, as the shades of an antialiased "
                             f"or smoothly resized mask do, and each would become a class; save the masks "
                             f"with hard edges (no antialiasing, nearest-neighbour resizing) or threshold them")
        return values

    if path.is_dir():
        folder = _davis_sequence_folder(path, "Annotations")
        files = _image_files(folder)
        if not files:
            raise InputError(f"no mask images in folder {folder}")
        _check_frame_files(folder, files, "mask")
        by_name = {n: i for i, n in enumerate(frame_names)}
        by_num: dict[int, int] = {}
        for i, n in enumerate(frame_names):
            nums = re.findall(r"\d+", n)
            if nums:
                by_num.setdefault(int(nums[-1]), i)

        def match(f: Path) -> int | None:
            if f.stem in by_name:
                return by_name[f.stem]
            nums = re.findall(r"\d+", f.stem)
            return by_num.get(int(nums[-1])) if nums else None

        found = [match(f) for f in files]
        if all(i is None for i in found) and len(files) == t:
            found = list(range(t))  # no name or number in common: the masks in the frames' order
        paired: dict[int, Path] = {}
        for f, idx in zip(files, found):
            if idx is None:
                raise InputError(f"mask {f} matches no frame name (frames are named like "
                                 f"{frame_names[0]}..{frame_names[-1]})")
            paired[idx] = f  # one mask a frame: two masks of one number are refused above
        for idx, f in paired.items():
            m, kind = _read_mask_png(f)
            out.add(idx, partial(_mask_png_values, f), kind, str(f), check_size(idx, m, kind, str(f)))
    elif path.suffix.lower() == ".npy":
        a = load_npy(path, "masks", mmap_mode="r")
        if a.ndim != 3 or a.shape[0] != t:
            raise InputError(f"masks {path} must have shape (T={t}, H, W), got {a.shape}")
        if not (np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.bool_)
                or np.issubdtype(a.dtype, np.floating)):
            raise InputError(f"masks {path} must hold integer labels, got dtype {a.dtype}")
        for i in range(t):
            m = _npy_mask(a, i, path)
            values = check_size(i, m)
            if values.tolist() == [255]:  # every pixel unlabelled (255 or NaN): the frame has no mask
                continue
            out.add(i, partial(_npy_mask, a, i, path), "index", str(path), values)
        if not out:
            raise InputError(f"masks {path} label no pixel: every value is 255 or NaN (unlabelled)")
    else:
        raise InputError(f"masks must be a folder of PNG masks or a .npy (T, H, W), got {path}")
    return out


def mask_classes(*mask_sets: Mapping[int, np.ndarray], ignore: int = 255, binary_255: bool = True
                 ) -> list[int]:
    """Sorted raw mask values that become classes ``0..K-1`` (0 first).

    In integer-label masks (a ``.npy`` or a palette PNG with several objects) 255 means
    "unlabelled" only if other object values exist; a mask whose only nonzero value is 255
    (DAVIS 2016 / binary masks) has 255 as the object.
    """
    vals: set[int] = {0}
    for ms in mask_sets:
        for k in ms:
            vals.update(int(v) for v in distinct_values(ms, k))
    objects = sorted(v for v in vals if v != 0)
    if ignore in objects and len(objects) > 1:
        objects.remove(ignore)
    return [0] + objects


def check_mask_encodings(mask_sets: Sequence[tuple[str, Mapping[int, np.ndarray]]],
                         frame_names: Sequence[str], ignore: int = 255) -> None:
    """Refuse masks that encode objects differently, e.g. one mask 0/1 and another 0/255
    (given together, 255 would mean "unlabelled" and the 0/255 masks would lose their object).

    Also refuses palette or grey masks (values are indices) mixed with colour masks (values
    are RGB colours): the same-looking object would become two classes.

    ``mask_sets``: ``(source, {frame index: raw mask})`` pairs, e.g. ``--labels`` and
    ``--eval-labels``; every mask of every set is compared with every other.
    """
    first: dict[str, str] = {}
    for source, ms in mask_sets:
        kinds = getattr(ms, "kinds", {})
        files = getattr(ms, "files", {})
        for k in sorted(ms):
            kind = kinds.get(k, "index")
            if kind == "index" and not distinct_values(ms, k).any():
                continue  # all background: no object to encode either way
            first.setdefault(kind, files.get(k, f"{source} frame {frame_names[k]}"))
    if len(first) > 1:
        raise InputError(f"masks mix image kinds: {first['index']} is a palette or grey image "
                         f"(values are label indices) but {first['colour']} is an RGB colour "
                         f"image (values are colours), so one object would get two classes; save "
                         f"all masks the same way (e.g. all palette PNGs)")
    only_255: tuple[str, int] | None = None
    other: tuple[str, int, list[int]] | None = None
    for source, ms in mask_sets:
        for k in sorted(ms):
            vals = [int(v) for v in distinct_values(ms, k) if v != 0]
            if vals == [ignore]:
                only_255 = only_255 or (source, k)
            elif vals and ignore not in vals:
                other = other or (source, k, vals[:4])
    if only_255 and other:
        (s1, k1), (s2, k2, v2) = only_255, other
        raise InputError(f"masks disagree on how objects are encoded: {s1} frame {frame_names[k1]} "
                         f"marks its object with {ignore}, {s2} frame {frame_names[k2]} with "
                         f"{', '.join(map(str, v2))}; in masks with several values {ignore} means "
                         f"unlabelled, so use one encoding for all masks (e.g. 0/1 or 0/255)")


def apply_classes(mask: np.ndarray, classes: Sequence[int], ignore: int = 255) -> np.ndarray:
    """Raw mask values -> uint8 class indices (values not in ``classes`` -> ``ignore``)."""
    lut = {v: k for k, v in enumerate(classes)}
    out = np.full(mask.shape, ignore, np.uint8)
    for v, k in lut.items():
        out[mask == v] = k
    return out
