"""Reading videos: a folder of numbered frames, a GIF, a video file or a ``.npy`` array as
``(T, H, W, 3)`` frames in their own bit depth.

:func:`open_video` opens them for reading on demand (:class:`VideoFrames`; image files and
decoded formats are read frame by frame, a ``.npy`` is memory-mapped), :func:`read_video` reads
them whole; :func:`frames_to_unit` and :func:`frames_for_display` bring frames of any bit depth
to [0, 1] and to 8-bit RGB.
"""

from __future__ import annotations

import itertools
import math
import threading
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from ...errors import InputError
from ...options import IMAGE_SUFFIXES, VIDEO_SUFFIXES
from .._npy import load_npy
from .image_files import _check_frame_files, _davis_sequence_folder, _image_files, open_image


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
        from ..lazy import ChannelView

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
            from ..lazy import Unmapped

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
