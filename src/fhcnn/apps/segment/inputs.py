"""Reading and validating the inputs of ``fhcnn segment``: frames, label masks, label frames,
evaluation masks. Everything is checked here, before any output is created.

The frames are opened, not loaded (:func:`~fhcnn.data.video.open_video`: a memory-mapped
``.npy``, or image files, a GIF or a video file decoded on demand); labels and evaluation masks
are :class:`FrameLabels`, which hold the masks of the frames that have one and read as a
``(T, H, W)`` label volume.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from ...data.lazy import ChannelView, LazyVolume, StreamStats
from ...data.video import (
    COLOUR_CODE_OFFSET,
    MaskSet,
    VideoFrames,
    apply_classes,
    check_mask_encodings,
    distinct_values,
    mask_classes,
    open_video,
    read_masks,
)
from ...errors import InputError
from ...options import IGNORE

__all__ = ["VideoInputs", "FrameLabels", "frames_volume", "load_video_inputs", "parse_frames", "mask_value",
           "value_name"]


#: Bytes of class masks a :class:`FrameLabels` keeps decoded (at least :data:`KEEP_FRAMES` frames).
MASK_CACHE_BYTES = 64 * 2**20
#: Frames a :class:`FrameLabels` keeps decoded at least: one prediction chunk's depth.
KEEP_FRAMES = 64


class FrameLabels:
    """A ``(T, H, W)`` uint8 label volume made of the class masks of some frames (``IGNORE``
    everywhere else): reads take an integer or a basic slice per axis.

    ``masks`` maps a frame to its ``(H, W)`` mask, or to a function that reads it (a mask file
    decoded on demand); read masks are kept, least recently used first out, up to
    ``cache_bytes`` (at least :data:`KEEP_FRAMES` frames), so memory does not grow with the
    number of frames.

    Example:
        >>> lab = FrameLabels((4, 2, 3), {1: np.ones((2, 3), np.uint8)})
        >>> lab[0:2, 0].tolist()
        [[255, 255, 255], [1, 1, 1]]
    """

    def __init__(self, shape: tuple[int, int, int], masks: Mapping[int, np.ndarray | Callable[[], np.ndarray]],
                 cache_bytes: int = MASK_CACHE_BYTES) -> None:
        self.shape = tuple(int(n) for n in shape)
        self._masks = {int(k): m if callable(m) else np.asarray(m, np.uint8) for k, m in masks.items()}
        self._cache: OrderedDict[int, np.ndarray] = OrderedDict()
        self._keep = max(KEEP_FRAMES, cache_bytes // max(1, self.shape[1] * self.shape[2]))
        self.cache_bytes = cache_bytes
        self.dtype = np.dtype(np.uint8)
        self.ndim = 3

    @property
    def frames(self) -> list[int]:
        """The frames that have a mask."""
        return sorted(self._masks)

    def mask(self, k: int) -> np.ndarray | None:
        """The ``(H, W)`` mask of frame ``k`` (``None``: it has none)."""
        m = self._masks.get(k)
        if m is None or isinstance(m, np.ndarray):
            return m
        if k in self._cache:
            self._cache.move_to_end(k)
            return self._cache[k]
        a = np.asarray(m(), np.uint8)
        self._cache[k] = a
        while len(self._cache) > self._keep:
            self._cache.popitem(last=False)
        return a

    def without(self, frames: Any) -> FrameLabels:
        """The same masks but those of ``frames``."""
        drop = set(int(k) for k in frames)
        return FrameLabels(self.shape, {k: m for k, m in self._masks.items() if k not in drop},  # type: ignore[arg-type]
                           self.cache_bytes)

    def __getitem__(self, key: Any) -> np.ndarray:
        key = key if isinstance(key, tuple) else (key,)
        key = key + (slice(None),) * (3 - len(key))
        t, rest = key[0], key[1:]
        if isinstance(t, (int, np.integer)):
            m = self.mask(int(t) % self.shape[0])
            return m[rest].copy() if m is not None else np.full(self.shape[1:], IGNORE, np.uint8)[rest]
        a, b, step = t.indices(self.shape[0])
        frames = range(a, b, step)
        out = np.full((len(frames), *self.shape[1:]), IGNORE, np.uint8)[(slice(None),) + rest].copy()
        for j, k in enumerate(frames):
            m = self.mask(k)
            if m is not None:
                out[j] = m[rest]
        return out

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        a = self[:]
        return a if dtype is None else a.astype(dtype)


COLOURS = ("red", "green", "blue")


def frames_volume(frames: Any) -> LazyVolume:
    """``(T, H, W, 3)`` frames (:class:`~fhcnn.data.video.VideoFrames` or an array) as the engine's
    ``(3, T, H, W)`` volume of raw values, read on demand (no copy)."""
    if isinstance(frames, VideoFrames):
        channels = [frames.channel(c) for c in range(3)]
    else:
        channels = [ChannelView(np.asarray(frames), c, axis=3) for c in range(3)]
    return LazyVolume(channels, names=[f"the {c} channel of the frames" for c in COLOURS])


@dataclass
class VideoInputs:
    """Validated inputs: frames ``(T, H, W, 3)`` in their own bit depth (:class:`~fhcnn.data.video.VideoFrames`
    or an array), per-frame class masks ``(T, H, W)`` uint8 (255 = no label; :class:`FrameLabels` or an
    array), the training frames, optional evaluation masks, class values, and the statistics of
    the three colour channels (streamed once; ``None``: the engine streams them)."""

    frames: Any
    names: list[str]
    labels: Any
    label_frames: list[int]
    eval_labels: Any
    eval_source: str | None
    classes: list[int]
    sources: dict[str, str] = field(default_factory=dict)
    stats: list[StreamStats] | None = None


def parse_frames(text: str | None, t: int) -> list[int] | None:
    """``"5,24,43"`` -> ``[5, 24, 43]`` (negative = from the end); checked against ``t`` frames."""
    if text is None:
        return None
    out = []
    for part in str(text).split(","):
        part = part.strip()
        if not part:
            continue
        try:
            k = int(part)
        except ValueError:
            raise InputError(f"--label-frames: {part!r} is not a frame index (use e.g. 0,23,47)") from None
        if not -t <= k < t:
            raise InputError(f"--label-frames: frame {k} is out of range; the video has {t} frames (0..{t - 1})")
        out.append(k % t)
    if not out:
        raise InputError("--label-frames is empty")
    return sorted(set(out))


def load_video_inputs(video: str | Path, masks: str | Path, label_frames: str | None = None,
                      eval_labels: str | Path | None = None) -> VideoInputs:
    """Read and validate the video, the label masks and the optional evaluation masks.

    Raises ``InputError``/``FileNotFoundError`` with a one-line message for: unreadable files,
    a mask size different from the frame size, a label frame out of range or without a mask,
    labels without foreground (or without background).
    """
    frames = open_video(video)
    names = frames.names
    t, h, w = frames.shape[:3]
    stats = frames_volume(frames).channel_stats()  # one streamed pass over the frames
    bad = [f"{c} ({st.nonfinite:,} values, one at frame {st.first_nonfinite[0]})"
           for c, st in zip(COLOURS, stats) if not st.finite and st.first_nonfinite is not None]
    if bad:
        raise InputError(f"{frames.path}: frames contain NaN or infinite values in {', '.join(bad)}")
    if all(st.min == st.max for st in stats):
        raise InputError(f"every pixel of every frame of {video} has the same colour "
                         f"({', '.join(f'{st.min:g}' for st in stats)}): nothing to segment")
    lab_raw = read_masks(masks, names, (h, w))
    ev_raw = read_masks(eval_labels, names, (h, w)) if eval_labels is not None else None
    check_mask_encodings([(str(masks), lab_raw)] + ([(str(eval_labels), ev_raw)] if ev_raw else []),
                         names)
    chosen = parse_frames(label_frames, t)
    if chosen is None:
        if len(lab_raw) >= t:
            chosen = sorted({0, (t - 1) // 2, t - 1})
        else:
            chosen = sorted(lab_raw)
    missing = [k for k in chosen if k not in lab_raw]
    if missing:
        raise InputError(f"no mask for label frame(s) {', '.join(names[k] for k in missing)} in {masks} "
                         f"(it has masks for {len(lab_raw)} frame(s))")
    others = [k for k in lab_raw if k not in chosen]
    _check_scored_classes(lab_raw.only(chosen), ev_raw if ev_raw is not None else lab_raw.only(others),
                          str(eval_labels) if ev_raw is not None else f"{masks} (frames not in --label-frames)",
                          str(masks), names, explicit=ev_raw is not None)
    classes = mask_classes(lab_raw.only(chosen), *([ev_raw] if ev_raw else []))
    if len(classes) > 255:
        raise InputError(f"too many distinct mask values ({len(classes)}) in {masks}")
    labels = _frame_labels((t, h, w), lab_raw.only(chosen), classes)
    index = {v: i for i, v in enumerate(classes)}
    present = {index[int(v)] for k in chosen for v in distinct_values(lab_raw, k) if int(v) in index}
    if not present - {0}:
        raise InputError(f"the label frames {chosen} of {masks} hold no foreground (every mask value is 0)")
    if 0 not in present:
        raise InputError(f"the label frames {chosen} of {masks} hold no background (value 0)")
    ev = None
    ev_source = None
    if ev_raw is not None:
        ev = _frame_labels((t, h, w), ev_raw, classes)
        ev_source = str(eval_labels)
    elif len(set(lab_raw) - set(chosen)) > 0:  # masks of other frames: score them (never trained on)
        ev = _frame_labels((t, h, w), lab_raw, classes)
        ev_source = f"{masks} (frames not in --label-frames)"
    return VideoInputs(frames, names, labels, chosen, ev, ev_source, classes,
                       {"video": str(video), "labels": str(masks),
                        **({"eval_labels": str(eval_labels)} if eval_labels is not None else {})}, stats)


def mask_value(v: int) -> int | list[int]:
    """A raw mask value as a user wrote it: an index, or an RGB mask's colour ``[R, G, B]``
    (raw values of RGB masks are colour codes, see :data:`~fhcnn.data.video.COLOUR_CODE_OFFSET`).

    Example:
        >>> mask_value(255), mask_value(COLOUR_CODE_OFFSET + 0xFF0080)
        (255, [255, 0, 128])
    """
    if v >= COLOUR_CODE_OFFSET:
        c = v - COLOUR_CODE_OFFSET
        return [c >> 16, (c >> 8) & 255, c & 255]
    return int(v)


def value_name(v: int) -> str:
    """A raw mask value in words, as a user wrote it: ``"255"``, or ``"colour (255, 0, 0)"``."""
    shown = mask_value(v)
    return f"colour ({', '.join(map(str, shown))})" if isinstance(shown, list) else str(shown)


def _check_scored_classes(train: MaskSet, scored: MaskSet, source: str, masks: str, names: Sequence[str],
                          explicit: bool) -> None:
    """Refuse scores over another class set than the label frames': a scored mask value that no
    label frame holds (the network never learns it; as evaluation masks it would be a class of
    IoU 0, in the other frames of ``--labels`` its pixels would be left out of the score), and
    evaluation masks (``explicit``) that lack an object the label frames hold (a binary mask
    beside several objects: the pixels of one object would be scored as another's)."""
    have = mask_classes(train)
    got = mask_classes(scored)
    extra = [v for v in got if v not in have]
    if extra:
        frame = next(k for k in sorted(scored) if extra[0] in distinct_values(scored, k))
        raise InputError(f"{source} frame {names[frame]} holds mask value {value_name(extra[0])}, which no label "
                         f"frame ({', '.join(names[k] for k in sorted(train))}) of {masks} holds: the network never "
                         f"learns that class, so the scores would be over another class set; give label "
                         f"frames that show it (--label-frames)"
                         + (" or evaluation masks with the labels' values" if explicit else ""))
    missing = [v for v in have if v not in got]
    if explicit and missing:
        raise InputError(f"the label frames of {masks} hold mask values "
                         f"{', '.join(map(value_name, have))} but the masks of {source} only "
                         f"{', '.join(map(value_name, got))}: evaluation masks with fewer objects than the "
                         f"labels (e.g. a binary mask beside several objects) score one object's pixels as "
                         f"another's; give evaluation masks with the labels' values")


def _classes_of(raw: MaskSet, k: int, classes: Sequence[int]) -> np.ndarray:
    return apply_classes(raw[k], classes)


def _frame_labels(shape: tuple[int, int, int], raw: MaskSet, classes: Sequence[int]) -> FrameLabels:
    """The class masks of ``raw``'s frames, each read (and mapped to classes) when first needed."""
    return FrameLabels(shape, {k: partial(_classes_of, raw, k, classes) for k in raw})
