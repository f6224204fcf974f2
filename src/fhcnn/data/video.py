"""Video and mask readers/writers, and a synthetic video generator with ground truth.

Readers (``read_video``): a folder of numbered frames (JPEG/PNG/BMP/TIFF, sorted by the number
in the name; the DAVIS layout ``JPEGImages/480p/<seq>/00000.jpg`` is found from the dataset
root or the sequence folder), a GIF, an MP4/AVI/MOV/MKV/WEBM (imageio with its ffmpeg plugin:
``pip install fhcnn[io]``), or a ``.npy`` array ``(T, H, W, 3)`` / ``(T, H, W)``.

Masks (``read_masks``): a folder of PNG masks named like the frames (DAVIS ``Annotations``:
palette indices, 0 = background, any other value (e.g. 255 or object indices) an object); it
may hold every frame or only some; or a ``.npy`` ``(T, H, W)`` label array. Mask *values*
are mapped to classes ``0..K-1`` by :func:`mask_classes` (0 stays background).
"""

from __future__ import annotations

import contextlib
import itertools
import math
import re
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping, Sequence

import numpy as np

from ..atomic import atomic_path
from ..errors import InputError
from ..options import IMAGE_SUFFIXES, VIDEO_SUFFIXES
from ._npy import load_npy

if TYPE_CHECKING:
    from PIL import Image

__all__ = ["read_video", "open_video", "VideoFrames", "frames_to_unit", "frames_for_display",
           "read_masks", "MaskSet", "distinct_values",
           "check_mask_encodings", "mask_classes", "apply_classes", "davis_palette", "write_mask_png",
           "generate_video", "open_image", "pil_high_depth"]


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


def _to_rgb(a: np.ndarray, what: str) -> np.ndarray:
    """``(T, H, W[, C])`` -> ``(T, H, W, 3)`` in the frames' own type (uint8, uint16, float ...),
    NaN/inf and non-numeric frames refused."""
    if not (a.ndim == 3 or (a.ndim == 4 and a.shape[-1] in (1, 3, 4))):
        raise InputError(f"{what}: expected frames (T, H, W, 3) or (T, H, W), got shape {a.shape}")
    a = _to_rgb_values(a, grey=a.ndim == 3)
    if a.dtype.kind == "f":
        if not np.isfinite(a).all():
            raise InputError(f"{what}: frames contain NaN or infinite values")
    elif a.dtype.kind not in "iu":
        raise InputError(f"{what}: frames must be numbers, got dtype {a.dtype}")
    return np.ascontiguousarray(a)


def _to_rgb_values(block: np.ndarray, grey: bool) -> np.ndarray:
    """Raw frames ``(..., C)`` (C = 1, 3, 4), or ``(...)`` when ``grey``, as ``(..., 3)`` in their
    own type (booleans as 0 / 255)."""
    if grey:
        block = block[..., None]
    if block.shape[-1] == 1:
        block = np.repeat(block, 3, -1)
    block = block[..., :3]
    if block.dtype == np.bool_:
        block = block.astype(np.uint8) * 255
    return block


def _unit_range(dtype: Any, lo: float, hi: float) -> tuple[float, float]:
    """The values a video of ``dtype`` whose values run from ``lo`` to ``hi`` maps to 0 and 1:
    0 and 255 for 8-bit frames, 0 and 1 for float frames already in [0, 1], else its own range."""
    if np.dtype(dtype) == np.uint8:
        return 0.0, 255.0
    if np.dtype(dtype).kind == "f" and lo >= 0.0 and hi <= 1.0:
        return 0.0, 1.0
    return lo, hi


def frames_to_unit(frames: np.ndarray) -> np.ndarray:
    """Frames of any bit depth -> float32 in [0, 1]: 8-bit frames are divided by 255, float
    frames already in [0, 1] are kept, anything else (16-bit, 12-bit in uint16, float in
    other units) is scaled from the video's own minimum and maximum (:func:`_unit_range`)."""
    f = np.asarray(frames)
    v = f.astype(np.float32)
    lo, hi = _unit_range(f.dtype, *((0.0, 0.0) if f.dtype == np.uint8 else (float(v.min()), float(v.max()))))
    return v if (lo, hi) == (0.0, 1.0) else (v - lo) / max(hi - lo, 1e-12)


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


def _read_frame(f: Path) -> np.ndarray:
    """One frame in its own bit depth: ``(H, W, 3)`` or ``(H, W)`` (uint8, uint16, float ...)."""
    if f.suffix.lower() in (".tif", ".tiff"):
        try:
            import tifffile
        except ImportError:
            tifffile = None  # type: ignore[assignment]
        if tifffile is not None:
            try:
                with tifffile.TiffFile(f) as tif:
                    series = tif.series[0]
                    a, axes = np.asarray(series.asarray()), str(series.axes)
            except Exception as e:
                raise InputError(f"cannot read frame {f}: {e}") from None
            if a.ndim == 3 and axes.endswith("SYX"):  # an RGB(A) TIFF stored plane by plane
                a = np.moveaxis(a, 0, -1)
            if not (a.ndim == 2 or (a.ndim == 3 and a.shape[-1] in (1, 3, 4))):
                raise InputError(f"frame {f} holds an array of shape {a.shape} (axes {axes}), not one "
                                 f"grey or RGB image (H, W) or (H, W, 3)")
            return a
    try:
        with open_image(f, "frame") as im:
            if im.mode.startswith("I") or im.mode == "F":  # 16/32-bit grey: keep the values
                return np.asarray(im)
            return np.asarray(im.convert("RGB"))
    except InputError:
        raise
    except Exception as e:  # PIL raises many kinds
        hint = " (install tifffile to read TIFF frames: pip install tifffile)" \
            if f.suffix.lower() in (".tif", ".tiff") else ""
        raise InputError(f"cannot read frame {f}: {e}{hint}") from None


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


class _FrameFiles:
    """Numbered image files as a ``(T, H, W[, C])`` array-like: each read decodes the frames
    of its range (:func:`_read_frame`) and checks them against the first frame's size and type."""

    def __init__(self, files: list[Path], first: np.ndarray) -> None:
        self.files, self.first = files, first
        self.shape = (len(files), *first.shape)
        self.dtype = first.dtype

    def _frame(self, i: int) -> np.ndarray:
        f = self.files[i]
        a = _read_frame(f)
        if a.shape[:2] != self.first.shape[:2]:
            raise InputError(f"frame {f} has size {a.shape[:2]}, but {self.files[0].name} "
                             f"has {self.first.shape[:2]}: all frames must have the same size")
        if a.dtype != self.first.dtype or a.ndim != self.first.ndim:
            raise InputError(f"frame {f} is {a.dtype} {a.shape}, but {self.files[0].name} is "
                             f"{self.first.dtype} {self.first.shape}: all frames must have the "
                             f"same bit depth and channels")
        return a

    def __getitem__(self, key: Any) -> np.ndarray:
        key = key if isinstance(key, tuple) else (key,)
        t, rest = key[0], key[1:]
        if isinstance(t, (int, np.integer)):
            return self._frame(int(t))[rest]
        return np.stack([self._frame(i)[rest] for i in range(*t.indices(self.shape[0]))])


class _DecodedFrames:
    """A GIF or a video file as a ``(T, H, W, 3)`` array-like: a read decodes its range of frames
    in order (``decode(start, stop)``); the count and size come from one decoding pass.

    The decoder of the last read and its last frame are kept: a read that starts at that frame
    or after it goes on from there, so reads in order (the one-time copy's slabs, several to a
    frame where a frame is larger than a slab) decode every frame once in all; a read further
    back starts a new decoder at its first frame.
    """

    def __init__(self, decode: Callable[[int, int], Iterator[np.ndarray]], shape: tuple[int, ...],
                 dtype: Any) -> None:
        self.decode, self.shape, self.dtype = decode, shape, np.dtype(dtype)
        self._lock = threading.Lock()
        self._decoder: Iterator[np.ndarray] | None = None
        self._next = 0  # the frame ``_decoder`` yields next
        self._last: tuple[int, np.ndarray] | None = None  # the last frame decoded, and its index

    def _range(self, a: int, b: int) -> list[np.ndarray]:
        """Frames ``a`` to ``b`` (``a <= b``), decoded."""
        with self._lock:
            frames: list[np.ndarray] = []
            if self._last is not None and self._last[0] == a < b:  # a frame read again (by rows)
                frames.append(self._last[1])
                a += 1
            if a < b:
                if self._decoder is None or a < self._next:
                    self._close()
                    self._decoder, self._next = iter(self.decode(a, self.shape[0])), a
                try:
                    for _ in range(a - self._next):  # frames between the last read and this one
                        next(self._decoder)
                    frames += itertools.islice(self._decoder, b - a)
                except BaseException:
                    self._decoder = None  # where it stopped is unknown: the next read starts anew
                    raise
                self._next = b
                if b >= self.shape[0]:  # at the end: the decoder (an ffmpeg process, a file) is closed now
                    self._close()
            if frames:
                self._last = (self._next - 1 if a < b else a - 1, frames[-1])
            return frames

    def _close(self) -> None:
        close = getattr(self._decoder, "close", None)
        if close is not None:
            close()
        self._decoder = None

    def __getitem__(self, key: Any) -> np.ndarray:
        key = key if isinstance(key, tuple) else (key,)
        t, rest = key[0], key[1:]
        if isinstance(t, (int, np.integer)):
            i = int(t) % self.shape[0]
            return self._range(i, i + 1)[0][rest]
        a, b, _ = t.indices(self.shape[0])
        frames = [f[rest] for f in self._range(a, max(a, b))]
        return np.stack(frames) if frames else np.zeros((0, *self.shape[1:]), self.dtype)


class VideoFrames:
    """A video's frames, ``(T, H, W, 3)`` in their own bit depth, read on demand.

    Reads take an integer or a basic slice per axis (the colour axis too) and return an array.
    ``np.asarray(frames)`` reads every frame. :meth:`channel` is one colour as a ``(T, H, W)``
    array-like (what the engine's :class:`~fhcnn.data.lazy.LazyVolume` takes).

    Attributes:
        source: the raw ``(T, H, W)`` / ``(T, H, W, C)`` array-like (a memory map, image files,
            a decoder).
        names: one name per frame (file stems or ``00000`` ...).
        path: where the frames come from.
        sequential: decoded frame by frame (image files, GIF, video files): a run reads them once
            into a chunked copy (:func:`fhcnn.data.lazy.copy_to_zarr`) and windows from there.
    """

    def __init__(self, source: Any, names: list[str], path: str, sequential: bool) -> None:
        self.source, self.names, self.path, self.sequential = source, names, path, sequential
        self._grey = len(source.shape) == 3
        dt = np.dtype(source.dtype)
        self.dtype = np.dtype(np.uint8) if dt == np.bool_ else dt
        self.shape: tuple[int, int, int, int] = (*(int(n) for n in source.shape[:3]), 3)  # type: ignore[assignment]
        self.ndim = 4

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key: Any) -> np.ndarray:
        key = key if isinstance(key, tuple) else (key,)
        if key and key[-1] is Ellipsis:
            key = key[:-1]
        spatial, colour = key[:3], (key[3] if len(key) > 3 else slice(None))
        return _to_rgb_values(np.asarray(self.source[spatial]), self._grey)[..., colour]

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        a = self[:]
        return a if dtype is None else a.astype(dtype)

    def planar(self) -> Any:
        """The frames as a ``(3, T, H, W)`` array-like (colour first; for a chunked copy)."""
        return _Planar(self)

    def channel(self, c: int) -> Any:
        """Colour ``c`` as a ``(T, H, W)`` array-like."""
        from .lazy import ChannelView

        return ChannelView(self, c, axis=3)


class _Planar:
    """``(T, H, W, 3)`` frames read as ``(3, T, H, W)``."""

    def __init__(self, frames: VideoFrames) -> None:
        self.frames = frames
        self.shape = (3, *frames.shape[:3])
        self.dtype = frames.dtype

    def __getitem__(self, key: Any) -> np.ndarray:
        key = key if isinstance(key, tuple) else (key,)
        key = key + (slice(None),) * (4 - len(key))
        block = self.frames[tuple(key[1:]) + (key[0],)]
        return block if isinstance(key[0], (int, np.integer)) else np.moveaxis(block, -1, 0)


def frames_for_display(frames: Any) -> Callable[[int], np.ndarray]:
    """Frame ``i`` of ``(T, H, W, 3)`` frames as 8-bit RGB for figures, read one frame at a time:
    :func:`frames_to_unit` of the whole video times 255 (8-bit frames as they are; the range of
    other frames found in one pass)."""
    if np.dtype(frames.dtype) == np.uint8:
        return lambda i: np.asarray(frames[i])
    lo, hi = math.inf, -math.inf
    for i in range(frames.shape[0]):
        f = np.asarray(frames[i], np.float32)
        lo, hi = min(lo, float(f.min())), max(hi, float(f.max()))
    lo, hi = _unit_range(frames.dtype, lo, hi)

    def show(i: int) -> np.ndarray:
        v = np.asarray(frames[i], np.float32)
        return np.clip(np.round((v - lo) / max(hi - lo, 1e-12) * 255), 0, 255).astype(np.uint8)

    return show


def open_video(path: str | Path) -> VideoFrames:
    """Open a video for reading on demand (see :class:`VideoFrames`): a folder of numbered
    frames, a GIF, a video file (one decoding pass counts and checks its frames) or a ``.npy``
    array ``(T, H, W, 3)`` / ``(T, H, W)`` (memory-mapped).

    Raises:
        FileNotFoundError: the path does not exist.
        InputError: unreadable file, no frames, frames of different sizes or bit depths, an
            unnumbered image among numbered frames, a broken link, unknown format, an array
            that is not frames.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"video not found: {path}")
    if path.is_dir():
        folder = _davis_sequence_folder(path, "JPEGImages")
        files = _image_files(folder)
        if not files:
            raise InputError(f"no image frames ({'/'.join(s[1:] for s in IMAGE_SUFFIXES)}) in folder {folder}")
        _check_frame_files(folder, files)
        source = _FrameFiles(files, _read_frame(files[0]))
        for i in range(1, len(files)):  # one decoding pass: every frame's size and type
            source._frame(i)
        return _checked(VideoFrames(source, [f.stem for f in files], str(folder), True))
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            from .lazy import Unmapped

            a = load_npy(path, "video", mmap_mode="r")
            frames = VideoFrames(Unmapped(a) if isinstance(a, np.memmap) else a,
                                 [f"{i:05d}" for i in range(a.shape[0] if a.ndim else 0)], str(path), False)
            if not (3 <= a.ndim <= 4) or (a.ndim == 4 and a.shape[-1] not in (1, 3, 4)):
                raise InputError(f"{path}: expected frames (T, H, W, 3) or (T, H, W), got shape {a.shape}")
            return _checked(frames)
        if suffix == ".gif":
            return _checked(_open_gif(path))
        if suffix in VIDEO_SUFFIXES:
            return _checked(_open_video_file(path))
        if suffix in IMAGE_SUFFIXES:
            raise InputError(f"{path} is a single image; give the folder of frames instead")
        raise InputError(f"unknown video format {suffix!r} of {path}: use a folder of frames, "
                         f".gif, {', '.join(VIDEO_SUFFIXES)} or .npy (T, H, W, 3)")
    except InputError:
        raise
    except Exception as e:
        raise InputError(f"cannot read video {path}: {type(e).__name__}: {e}") from None


def _checked(frames: VideoFrames) -> VideoFrames:
    if frames.shape[0] == 0:
        raise InputError(f"{frames.path}: no frames (array shape {tuple(frames.source.shape)})")
    if frames.dtype.kind not in "iuf":
        raise InputError(f"{frames.path}: frames must be numbers, got dtype {frames.dtype}")
    return frames


def _sequential(path: Path, frames: Callable[[], Iterator[np.ndarray]]) -> VideoFrames:
    """Frames decoded in order (``frames()`` yields every frame from the first): one decoding pass
    counts them and checks that every frame has the first one's shape; a read decodes its range."""

    def decode(a: int, b: int) -> Iterator[np.ndarray]:
        return itertools.islice(frames(), a, b)

    n, first = 0, None
    for fr in frames():
        if first is not None and fr.shape != first.shape:
            raise InputError(f"{path}: frame {n} has shape {fr.shape}, frame 0 {first.shape}")
        first = fr if first is None else first
        n += 1
    if first is None:
        raise InputError(f"{path}: no frames")
    return VideoFrames(_DecodedFrames(decode, (n, *first.shape), first.dtype),
                       [f"{i:05d}" for i in range(n)], str(path), True)


def _open_gif(path: Path) -> VideoFrames:
    from PIL import Image, ImageSequence

    def frames() -> Iterator[np.ndarray]:
        with Image.open(path) as im:
            for fr in ImageSequence.Iterator(im):
                yield np.asarray(fr.convert("RGB"))

    return _sequential(path, frames)


def _open_video_file(path: Path) -> VideoFrames:
    import imageio.v2 as imageio

    def reader() -> Any:
        try:
            return imageio.get_reader(path, format="FFMPEG")
        except (ImportError, ValueError, RuntimeError) as e:
            if "ffmpeg" in str(e).lower() and "could not find" not in str(e).lower():
                raise InputError(f"cannot read {path}: {e} (install the video reader: "
                                 "pip install 'fhcnn[io]' or imageio-ffmpeg)") from None
            raise

    def frames() -> Iterator[np.ndarray]:
        with reader() as r:
            for fr in r:  # type: ignore[attr-defined]
                yield np.asarray(fr)

    return _sequential(path, frames)


def read_video(path: str | Path) -> tuple[np.ndarray, list[str]]:
    """Read a whole video as ``(T, H, W, 3)`` frames in their own bit depth (uint8, uint16 PNG/TIFF/
    ``.npy``, float ...; see :func:`frames_to_unit`) and their names (file stems or indices);
    :func:`open_video` reads on demand.

    Raises:
        FileNotFoundError: the path does not exist.
        InputError: as :func:`open_video`, and NaN or infinite values.
    """
    frames = open_video(path)
    return _to_rgb(np.asarray(frames.source[:]), frames.path), frames.names


#: Lossy image formats: never read as masks.
LOSSY_SUFFIXES = (".jpg", ".jpeg")


#: Added to the code ``R * 65536 + G * 256 + B`` of every colour but black in an RGB mask, so no
#: colour code is a label index: pure blue (0, 0, 255) would be 255, "void" in masks with several
#: objects, and its object would be dropped from training without a word.
COLOUR_CODE_OFFSET = 1 << 24


def _read_mask_png(f: Path) -> tuple[np.ndarray, str]:
    """``(raw values, kind)``: palette index or grey value (kind ``"index"``; the alpha channel of
    a grey or palette image with alpha is left out), or each RGB colour
    as one value ``R * 65536 + G * 256 + B``, plus :data:`COLOUR_CODE_OFFSET` but for black
    (kind ``"colour"``; black = background = 0)."""
    if f.suffix.lower() in LOSSY_SUFFIXES:
        raise InputError(f"mask {f} is a JPEG: lossy compression turns one label value into "
                         f"many; save the masks as PNG")
    try:
        with open_image(f, "mask") as im:
            if im.format == "JPEG":
                raise InputError(f"mask {f} holds JPEG data: lossy compression turns one label "
                                 f"value into many; save the masks as PNG")
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


def davis_palette() -> list[int]:
    """The DAVIS / PASCAL VOC 256-colour palette (flat list of 768 ints)."""
    pal = []
    for i in range(256):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        pal += [r, g, b]
    return pal


def write_mask_png(path: str | Path, mask: np.ndarray) -> None:
    """Write a ``(H, W)`` uint8 label mask as a palette PNG (DAVIS format), atomically."""
    from PIL import Image

    im = Image.fromarray(np.asarray(mask, dtype=np.uint8), mode="P")
    im.putpalette(davis_palette())
    with atomic_path(path) as tmp:
        im.save(tmp, format="PNG")


# ----------------------------------------------------------------- synthetic video
def _smooth_field(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    f = gaussian_filter(rng.standard_normal(shape), sigma, mode="wrap")
    return (f - f.mean()) / (f.std() + 1e-8)


def _texture(rng: np.random.Generator, shape: tuple[int, int], colors: np.ndarray, sigma: float) -> np.ndarray:
    """A colour texture: two smooth fields mixing three colours, plus fine grain."""
    a = 1 / (1 + np.exp(-2.0 * _smooth_field(rng, shape, sigma)))
    b = 1 / (1 + np.exp(-2.0 * _smooth_field(rng, shape, sigma / 2.5)))
    tex = (a[..., None] * colors[0] + (1 - a[..., None]) * colors[1]) * (1 - 0.35 * b[..., None]) \
        + 0.35 * b[..., None] * colors[2]
    tex += 0.04 * rng.standard_normal(shape + (3,))
    return np.clip(tex, 0, 1)


def generate_video(
    out: str | Path | None = None,
    frames: int = 48,
    height: int = 96,
    width: int = 160,
    objects: int = 2,
    seed: int = 0,
    binary: bool = False,
    name: str = "synthetic",
) -> tuple[np.ndarray, np.ndarray]:
    """A synthetic video with ground truth: textured objects that move, rotate, scale and
    occlude each other over a textured, panning background.

    Args:
        out: if given, a DAVIS-layout root: ``out/JPEGImages/480p/<name>/00000.jpg`` and
            ``out/Annotations/480p/<name>/00000.png`` (palette PNG, object k has index k).
        frames, height, width: video size.
        objects: number of objects (drawn back to front; later ones occlude earlier ones).
        seed: random seed (same seed, same video).
        binary: all objects get label 1 (else object k gets label k).
        name: sequence name.

    Returns:
        ``(video (T, H, W, 3) uint8, masks (T, H, W) uint8)``.
    """
    from scipy.ndimage import map_coordinates

    if frames < 1 or height < 8 or width < 8 or objects < 1:
        raise ValueError(f"need frames >= 1, height/width >= 8, objects >= 1; got {frames}, "
                         f"{height}x{width}, {objects}")
    rng = np.random.default_rng(seed)
    # background: a large texture panned over time (camera motion)
    bh, bw = height + frames + 40, width + 2 * frames + 40
    bg_colors = rng.uniform(0.15, 0.85, (3, 3))
    bg = _texture(rng, (bh, bw), bg_colors, sigma=6.0)
    pan = rng.uniform(-1, 1, 2) * np.array([0.5, 1.2])
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    objs = []
    for _ in range(objects):
        size = rng.uniform(0.16, 0.26) * min(height, width) * (1.0 if objects < 3 else 0.8)
        n_harm = 3
        objs.append(dict(
            tex=_texture(rng, (64, 64), np.clip(rng.uniform(0.05, 0.95, (3, 3)), 0, 1), sigma=4.0),
            size=size,
            radial=rng.uniform(-0.25, 0.25, n_harm) / np.arange(1, n_harm + 1),
            phase=rng.uniform(0, 2 * np.pi, n_harm),
            aspect=rng.uniform(0.6, 1.0),
            c0=np.array([rng.uniform(0.25, 0.75) * height, rng.uniform(0.2, 0.8) * width]),
            vel=rng.uniform(-1, 1, 2) * np.array([0.35, 0.9]) * 48 / max(frames, 1),
            wobble=rng.uniform(2, 6, 2), wfreq=rng.uniform(0.05, 0.2),
            rot0=rng.uniform(0, 2 * np.pi), rotv=rng.uniform(-0.06, 0.06) * 48 / max(frames, 1),
            scale_amp=rng.uniform(0.1, 0.3), scale_freq=rng.uniform(0.03, 0.1),
        ))
    video = np.zeros((frames, height, width, 3), np.uint8)
    masks = np.zeros((frames, height, width), np.uint8)
    for t in range(frames):
        oy, ox = 20 + pan[0] * t + frames / 2, 20 + pan[1] * t + frames
        img = np.stack([map_coordinates(bg[..., c], [yy + oy, xx + ox], order=1, mode="wrap")
                        for c in range(3)], -1)
        lab = np.zeros((height, width), np.uint8)
        for k, o in enumerate(objs):
            c = o["c0"] + o["vel"] * t + o["wobble"] * np.sin(o["wfreq"] * t + np.array([0, 1.3]))
            # bounce inside the frame
            for a, n in enumerate((height, width)):
                lo, hi = 0.1 * n, 0.9 * n
                span = hi - lo
                v = (c[a] - lo) % (2 * span)
                c[a] = lo + (v if v < span else 2 * span - v)
            s = o["size"] * (1 + o["scale_amp"] * np.sin(o["scale_freq"] * t))
            th = o["rot0"] + o["rotv"] * t
            dy, dx = yy - c[0], xx - c[1]
            u = (np.cos(th) * dx + np.sin(th) * dy) / s
            v = (-np.sin(th) * dx + np.cos(th) * dy) / (s * o["aspect"])
            r, ang = np.hypot(u, v), np.arctan2(v, u)
            rad = 1 + sum(o["radial"][j] * np.cos((j + 2) * ang + o["phase"][j]) for j in range(len(o["radial"])))
            inside = r < rad
            tu, tv = (u * 0.45 + 0.5) * 63, (v * 0.45 + 0.5) * 63
            tex = np.stack([map_coordinates(o["tex"][..., ch], [tv, tu], order=1, mode="reflect")
                            for ch in range(3)], -1)
            shade = (1 - 0.25 * np.clip(r / rad, 0, 1) ** 2)[..., None]
            img = np.where(inside[..., None], tex * shade, img)
            lab[inside] = 1 if binary else k + 1
        video[t] = np.clip(np.round(img * 255), 0, 255).astype(np.uint8)
        masks[t] = lab
    if out is not None:
        from PIL import Image

        root = Path(out)
        fdir, mdir = root / "JPEGImages" / "480p" / name, root / "Annotations" / "480p" / name
        for t in range(frames):
            with atomic_path(fdir / f"{t:05d}.jpg") as tmp:
                Image.fromarray(video[t]).save(tmp, format="JPEG", quality=92)
            write_mask_png(mdir / f"{t:05d}.png", masks[t])
    return video, masks
