"""Generated 3D volumes with known truth, computed block by block so any size can be made.

Every voxel is a function of its global index and the seed only (counter-based hashing, no
random state carried between blocks), so a volume written in blocks of any size is the same
volume, and memory is bounded by one block whatever the volume's size.

Kinds (:data:`VolumeKind`):

``"cells"``
    Textured, touching, anisotropic blobs (ellipsoids on a jittered lattice, elongated along
    their own axes, wobbly surfaces) in noise. Labels: 0 background, 1 boundary (a shell of
    about 1 voxel at each cell's surface and where two cells touch), 2 foreground (inside).
    Channel 0 is a membrane stain (bright boundary, grey inside), channel 1 a cytoplasm stain
    (bright inside, dark boundary), each with its own noise.
``"seismic"``
    Layered reflectivity (a reflector every ~3 voxels of geological time, random strengths)
    convolved with a Ricker wavelet along the vertical axis (axis 0), folded (smooth bumps whose
    amplitude grows with depth), and offset by planar normal faults (vertical throw on the
    hanging-wall side). Labels: 0 rock, 1 fault (voxels within 0.75 voxel of a fault plane).
    Channel 1 is the same section with a lower wavelet frequency and other noise.
``"seismic-layers"``
    The same seismic image; labels: 4 formations in geological time (0 shallowest ... 3
    deepest), cut and offset by the faults and folded like the reflectors.

Functions::

    image, labels = generate_volume("cells", (64, 64, 64), seed=0)     # in memory
    image, labels = volume_block("cells", (slice(0, 32),) * 3, (64, 64, 64), seed=0)
    written = write_volume("cells", "cells.npy", (512, 512, 512), seed=0)  # block by block
    written.image, written.labels     # cells.npy and cells-labels.npy (or x.zarr:image, x.zarr:labels)

``dtype="uint8"`` maps each kind's intensities with a fixed gain (clipped), never with
statistics of the whole volume.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Sequence, get_args

import numpy as np

__all__ = ["VolumeKind", "KINDS", "CLASS_NAMES", "VERTICAL_AXIS", "generate_volume", "volume_block",
           "write_volume", "WrittenVolume"]

#: The kinds of generated volume.
VolumeKind = Literal["cells", "seismic", "seismic-layers"]
KINDS: tuple[str, ...] = get_args(VolumeKind)
#: Class names of each kind's labels, in label order.
CLASS_NAMES: dict[str, tuple[str, ...]] = {
    "cells": ("background", "boundary", "foreground"),
    "seismic": ("rock", "fault"),
    "seismic-layers": ("layer 0", "layer 1", "layer 2", "layer 3"),
}
#: The axis of each kind that points down (the seismic kinds' depth; ``None``: no such axis).
VERTICAL_AXIS: dict[str, int | None] = {"cells": None, "seismic": 0, "seismic-layers": 0}
Box = tuple[slice, slice, slice]

_M64 = np.uint64(0xFFFFFFFFFFFFFFFF)


# ---------------------------------------------------------------------------------------------
# counter-based hashing: a uniform number for every (seed, stream, integer coordinates)

def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64 finalizer of a uint64 array (wrapping arithmetic)."""
    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _uniform(seed: int, stream: int, *coords: np.ndarray | int) -> np.ndarray:
    """Uniform numbers in [0, 1) (float64), one per broadcast element of ``coords``; a function
    of ``(seed, stream, coords)`` only."""
    with np.errstate(over="ignore"):
        h = _mix(np.asarray([(seed * 0x9E3779B97F4A7C15 + stream * 0xD1B54A32D192ED03) & 0xFFFFFFFFFFFFFFFF],
                            np.uint64))
        for c in coords:
            a = np.asarray(c, np.int64).astype(np.uint64)
            h = _mix(h ^ (a * np.uint64(0x9E3779B97F4A7C15) + np.uint64(0x632BE59BD9B4E019)))
    return (h >> np.uint64(11)).astype(np.float64) * 2.0 ** -53


def _normal(seed: int, stream: int, *coords: np.ndarray | int) -> np.ndarray:
    """Standard normal numbers (Box-Muller of two hashed uniforms), like :func:`_uniform`."""
    u1 = _uniform(seed, 2 * stream, *coords)
    u2 = _uniform(seed, 2 * stream + 1, *coords)
    return np.sqrt(-2.0 * np.log1p(-u1)) * np.cos(2 * math.pi * u2)


def _value_noise(seed: int, stream: int, p: np.ndarray, period: float) -> np.ndarray:
    """Smooth noise in [-1, 1] at points ``p`` ``(..., 3)``: hashed values on a lattice of
    ``period`` voxels, interpolated with a smoothstep."""
    q = p / period
    i = np.floor(q).astype(np.int64)
    f = q - i
    f = f * f * (3 - 2 * f)
    out = np.zeros(p.shape[:-1])
    for corner in itertools.product((0, 1), repeat=3):
        v = _uniform(seed, stream, *(i[..., a] + corner[a] for a in range(3))) * 2 - 1
        w = np.ones(p.shape[:-1])
        for a in range(3):
            w = w * (f[..., a] if corner[a] else 1 - f[..., a])
        out += w * v
    return out


def _grid(box: Box) -> np.ndarray:
    """``(d, h, w, 3)`` float64 voxel coordinates of ``box``."""
    axes = [np.arange(s.start, s.stop, dtype=np.float64) for s in box]
    return np.stack(np.meshgrid(*axes, indexing="ij"), -1)


# ---------------------------------------------------------------------------------------------
# cells

_CELL = 20.0        # lattice period of the cell centres (voxels)
_THICK = 1.0        # boundary shell thickness (voxels)


def _cell_lattice(seed: int, a: np.ndarray, b: np.ndarray) -> dict[str, np.ndarray]:
    """The cells of the lattice cells ``a .. b`` (inclusive, ``(3,)`` integer corners), as dense
    arrays over that range: centre ``(..., 3)`` and semi-axes ``(..., 3)`` in voxels, intensity
    factor, present (15 % of the lattice cells hold no cell)."""
    idx = np.stack(np.meshgrid(*[np.arange(a[k], b[k] + 1) for k in range(3)], indexing="ij"), -1)
    cols = [idx[..., k] for k in range(3)]
    centre = (idx + 0.2 + 0.6 * np.stack([_uniform(seed, 2 + k, *cols) for k in range(3)], -1)) * _CELL
    radius = _CELL * (0.55 + 0.22 * _uniform(seed, 5, *cols))
    stretch = np.exp(0.3 * np.clip(np.stack([_normal(seed, 6 + k, *cols) for k in range(3)], -1), -2, 2))
    stretch = stretch / np.cbrt(stretch.prod(-1, keepdims=True))
    return {"centre": centre, "axes": radius[..., None] * stretch,
            "level": 0.8 + 0.4 * _uniform(seed, 9, *cols), "present": _uniform(seed, 1, *cols) < 0.85}


def _cells_block(box: Box, seed: int, channel: int) -> tuple[np.ndarray, np.ndarray]:
    p = _grid(box)
    shape = p.shape[:-1]
    flat = p.reshape(-1, 3)
    # each voxel compares the cells of the 2 x 2 x 2 lattice cells nearest to it (its own and
    # the neighbours on its side; a function of the voxel alone, whatever the block):
    # normalized ellipsoid distance, 1 = on the surface
    q = flat / _CELL
    cell = np.floor(q).astype(np.int64)
    side = np.where(q - cell < 0.5, -1, 1)
    a, b = cell.min(0) - 1, cell.max(0) + 1
    lat = _cell_lattice(seed, a, b)
    dims = np.asarray(lat["level"].shape)
    offs = np.array(list(itertools.product((0, 1), repeat=3)))
    nb = cell[:, None, :] + offs[None] * side[:, None, :] - a            # (n, 8, 3)
    lin = (nb[..., 0] * dims[1] + nb[..., 1]) * dims[2] + nb[..., 2]     # (n, 8)
    centre = lat["centre"].reshape(-1, 3).astype(np.float32)
    axes = lat["axes"].reshape(-1, 3).astype(np.float32)
    diff = (flat.astype(np.float32)[:, None, :] - centre[lin]) / axes[lin]
    e = np.where(lat["present"].reshape(-1)[lin], np.sqrt((diff * diff).sum(-1)), np.inf)   # (n, 8)
    order = np.argsort(e, axis=1)[:, :2]
    e1 = np.take_along_axis(e, order[:, :1], 1)[:, 0].astype(np.float64)
    e2 = np.take_along_axis(e, order[:, 1:], 1)[:, 0].astype(np.float64)
    own = np.take_along_axis(lin, order[:, :1], 1)[:, 0]
    r1 = np.where(np.isfinite(e1), axes[own].mean(-1), 1.0)
    lvl = lat["level"].reshape(-1)[own]
    wob = 1 + 0.12 * _value_noise(seed, 20, flat, 7.0)
    inside_d = (wob - e1) * r1                                      # voxels to the own surface
    touch_d = (e2 - e1) * r1 * 0.5                                  # voxels to the neighbour's interface
    inside = inside_d > 0
    border = np.minimum(inside_d, np.where(e2 < wob + 0.5, touch_d, np.inf))
    labels = np.where(inside, np.where(border < _THICK, 1, 2), 0).astype(np.uint8)
    # image: a soft inside mask, a membrane near the border, texture, noise
    soft_in = 1 / (1 + np.exp(-np.clip(inside_d / 0.6, -30, 30)))
    membrane = np.exp(-((np.maximum(border, 0) - 0.5) / 0.8) ** 2) * soft_in
    texture = _value_noise(seed, 21 + channel, flat, 3.0)
    noise = _normal(seed, 30 + channel, *(p[..., a].reshape(-1).astype(np.int64) for a in range(3)))
    if channel == 0:   # membrane stain
        img = 0.18 + 0.30 * lvl * soft_in * (1 + 0.35 * texture) + 0.38 * membrane + 0.13 * noise
    else:              # cytoplasm stain
        img = 0.15 + 0.55 * lvl * soft_in * (1 + 0.30 * texture) * (1 - 0.75 * membrane) + 0.16 * noise
    return img.reshape(shape), labels.reshape(shape)


# ---------------------------------------------------------------------------------------------
# seismic

_LAYER = 3.0        # geological time between reflectors (voxels)
_FREQ = (0.11, 0.07)  # Ricker peak frequency per channel (cycles per voxel)


@dataclass(frozen=True)
class _Fault:
    point: np.ndarray    # (3,) a point of the plane (z, y, x)
    normal: np.ndarray   # (3,) unit normal
    throw: float         # vertical offset of the hanging wall (voxels)


def _faults(seed: int, shape: Sequence[int]) -> list[_Fault]:
    """3 planar normal faults (dip 60-80 degrees, random strike, throw 3-8 voxels), placed in the
    volume's horizontal middle so each crosses it."""
    d, h, w = (float(n) for n in shape)
    out = []
    for k in range(3):
        u = [float(v) for v in _uniform(seed, 100 + k, np.arange(6))]
        dip = math.radians(60 + 20 * u[0])
        strike = 2 * math.pi * u[1]
        normal = np.array([math.cos(dip), math.sin(dip) * math.cos(strike), math.sin(dip) * math.sin(strike)])
        point = np.array([d * (0.3 + 0.4 * u[2]), h * (0.2 + 0.6 * u[3]), w * (0.2 + 0.6 * u[4])])
        out.append(_Fault(point, normal, 3 + 5 * u[5]))
    return out


def _geological_time(p: np.ndarray, seed: int, shape: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Geological time ``t`` (the depth a voxel had before folding and faulting) and the
    distance to the nearest fault plane, at points ``p`` ``(n, 3)``."""
    d, h, w = (float(n) for n in shape)
    z, y, x = p[:, 0], p[:, 1], p[:, 2]
    fold = np.zeros(len(p))
    for k in range(4):
        u = [float(v) for v in _uniform(seed, 200 + k, np.arange(5))]
        ang = 2 * math.pi * u[0]
        wave = max(h, w) * (0.35 + 0.5 * u[1])
        amp = 2 + 4 * u[2]
        phase = 2 * math.pi * u[3]
        fold += amp * np.sin(2 * math.pi * (y * math.cos(ang) + x * math.sin(ang)) / wave + phase)
    u = [float(v) for v in _uniform(seed, 210, np.arange(2))]
    dip = 0.08 * (u[0] - 0.5) * y + 0.08 * (u[1] - 0.5) * x
    t = z - (fold * (0.3 + 0.7 * z / max(d, 1.0)) + dip)
    dist = np.full(len(p), np.inf)
    for f in _faults(seed, shape):
        s = (p - f.point) @ f.normal
        t = np.where(s > 0, t - f.throw, t)
        dist = np.minimum(dist, np.abs(s))
    return t, dist


def _ricker(u: np.ndarray, freq: float) -> np.ndarray:
    a = (math.pi * freq * u) ** 2
    return (1 - 2 * a) * np.exp(-a)


def _seismic_block(box: Box, seed: int, shape: Sequence[int], channel: int, layers: bool
                   ) -> tuple[np.ndarray, np.ndarray]:
    p = _grid(box)
    out_shape = p.shape[:-1]
    flat = p.reshape(-1, 3)
    t, dist = _geological_time(flat, seed, shape)
    freq = _FREQ[min(channel, 1)]
    j0 = np.floor(t / _LAYER).astype(np.int64)
    reach = int(math.ceil(1.6 / freq / _LAYER)) + 1
    img = np.zeros(len(flat))
    for o in range(-reach, reach + 1):
        j = j0 + o
        tau = (j + 0.5 + 0.3 * (_uniform(seed, 300, j) - 0.5)) * _LAYER
        strength = _normal(seed, 310, j) * (1 + 1.5 * (_uniform(seed, 320, j) < 0.12))
        img += strength * _ricker(t - tau, freq)
    noise = _normal(seed, 330 + channel, *(p[..., a].reshape(-1).astype(np.int64) for a in range(3)))
    img = img + 0.45 * noise
    if layers:
        lab = np.clip(np.floor(t / (float(shape[0]) / 4)), 0, 3).astype(np.uint8)
    else:
        lab = (dist < 0.75).astype(np.uint8)
    return img.reshape(out_shape), lab.reshape(out_shape)


# ---------------------------------------------------------------------------------------------
# public API

def _check(kind: str, shape: Sequence[int], dtype: str) -> tuple[int, int, int]:
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    if len(shape) != 3 or any(int(n) < 1 for n in shape):
        raise ValueError(f"shape must be three positive sizes (D, H, W), got {tuple(shape)}")
    if dtype not in ("uint8", "float32"):
        raise ValueError(f"dtype must be 'uint8' or 'float32', got {dtype!r}")
    return int(shape[0]), int(shape[1]), int(shape[2])


def _to_dtype(kind: str, img: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "float32":
        return img.astype(np.float32)
    if kind == "cells":
        return np.clip(np.rint(img * 255), 0, 255).astype(np.uint8)
    return np.clip(np.rint(128 + 32 * img), 0, 255).astype(np.uint8)


def volume_block(kind: VolumeKind, box: Box, shape: Sequence[int], seed: int = 0, *, channel: int = 0,
                 dtype: str = "float32") -> tuple[np.ndarray, np.ndarray]:
    """Image and labels of the block ``box`` (three slices with step 1, inside ``shape``) of the
    volume ``(kind, shape, seed)``: ``(d, h, w)`` arrays of ``dtype`` and uint8. ``channel``
    0 or 1 selects the image (same labels). The same voxels whatever the blocks."""
    full = _check(kind, shape, dtype)
    box = tuple(slice(*s.indices(n)[:2]) for s, n in zip(box, full))  # type: ignore[assignment]
    if channel not in (0, 1):
        raise ValueError(f"channel must be 0 or 1, got {channel}")
    if kind == "cells":
        img, lab = _cells_block(box, seed, channel)
    else:
        img, lab = _seismic_block(box, seed, full, channel, kind == "seismic-layers")
    return _to_dtype(kind, img, dtype), lab


def _blocks(shape: Sequence[int], chunks: Sequence[int]) -> list[Box]:
    starts = [range(0, n, c) for n, c in zip(shape, chunks)]
    return [tuple(slice(s, min(s + c, n)) for s, c, n in zip(st, chunks, shape))  # type: ignore[misc]
            for st in itertools.product(*starts)]


def generate_volume(kind: VolumeKind, shape: Sequence[int], seed: int = 0, *, channel: int = 0,
                    dtype: str = "float32", chunks: Sequence[int] = (32, 32, 32)
                    ) -> tuple[np.ndarray, np.ndarray]:
    """The whole volume in memory: image ``(D, H, W)`` of ``dtype`` and labels ``(D, H, W)``
    uint8 (computed in blocks of ``chunks``; equal to any block of :func:`volume_block`)."""
    full = _check(kind, shape, dtype)
    img = np.empty(full, np.dtype(dtype))
    lab = np.empty(full, np.uint8)
    for box in _blocks(full, chunks):
        img[box], lab[box] = volume_block(kind, box, full, seed, channel=channel, dtype=dtype)
    return img, lab


@dataclass(frozen=True)
class WrittenVolume:
    """What :func:`write_volume` wrote: the image and label specs (a ``.npy`` path, or
    ``x.zarr:image`` / ``x.zarr:labels``), the shape and the class names."""

    image: str
    labels: str
    shape: tuple[int, int, int]
    classes: tuple[str, ...]


def write_volume(kind: VolumeKind, path: str | Path, shape: Sequence[int], seed: int = 0,
                 dtype: str = "uint8", chunks: Sequence[int] = (64, 64, 64), *, channel: int = 0,
                 overwrite: bool = False) -> WrittenVolume:
    """Write a generated volume and its truth labels block by block, never holding the whole.

    ``path`` ending in ``.npy``: the image there and the labels beside it as ``<stem>-labels.npy``
    (written slab by slab: ``chunks[0]`` depth slices at a time, each computed in blocks of
    ``chunks``, so memory is one slab plus one block). ``path`` ending in ``.zarr``: a zarr group
    with arrays ``image`` and ``labels`` chunked by ``chunks`` (memory one block) and the
    attributes ``kind``, ``seed``, ``classes``, ``channel``.

    Raises:
        FileExistsError: an output exists and ``overwrite`` is not set.
        ValueError: a bad kind, shape, dtype, chunk size or file suffix.
    """
    full = _check(kind, shape, dtype)
    if len(chunks) != 3 or any(int(c) < 1 for c in chunks):
        raise ValueError(f"chunks must be three positive sizes, got {tuple(chunks)}")
    ch = (int(chunks[0]), int(chunks[1]), int(chunks[2]))
    p = Path(path)
    classes = CLASS_NAMES[kind]
    if p.suffix == ".npy":
        lab_path = p.with_name(p.stem + "-labels.npy")
        for q in (p, lab_path):
            if q.exists() and not overwrite:
                raise FileExistsError(f"{q} exists (pass overwrite=True to replace it)")
        _write_npy_pair(kind, full, seed, dtype, ch, channel, p, lab_path)
        return WrittenVolume(str(p), str(lab_path), full, classes)
    if p.suffix == ".zarr":
        import zarr

        if p.exists() and not overwrite:
            raise FileExistsError(f"{p} exists (pass overwrite=True to replace it)")
        group = zarr.open_group(str(p), mode="w")
        group.attrs.update({"kind": kind, "seed": int(seed), "classes": list(classes), "channel": channel})
        img_a = group.create_array("image", shape=full, chunks=ch, dtype=dtype)
        lab_a = group.create_array("labels", shape=full, chunks=ch, dtype="uint8")
        for box in _blocks(full, ch):
            img, lab = volume_block(kind, box, full, seed, channel=channel, dtype=dtype)
            img_a[box] = img
            lab_a[box] = lab
        return WrittenVolume(f"{p}:image", f"{p}:labels", full, classes)
    raise ValueError(f"path must end in .npy or .zarr, got {p.name}")


def _write_npy_pair(kind: VolumeKind, shape: tuple[int, int, int], seed: int, dtype: str,
                    chunks: tuple[int, int, int], channel: int, img_path: Path, lab_path: Path) -> None:
    """Both ``.npy`` files, slab by slab (plain file writes after the header: no whole-volume
    memory map stays resident)."""
    d, h, w = shape
    files = []
    for q, dt in ((img_path, np.dtype(dtype)), (lab_path, np.dtype(np.uint8))):
        m = np.lib.format.open_memmap(q, mode="w+", dtype=dt, shape=shape)
        offset = int(m.offset)
        del m
        files.append((open(q, "r+b"), offset, dt))
    try:
        for z0 in range(0, d, chunks[0]):
            z1 = min(d, z0 + chunks[0])
            slab_img = np.empty((z1 - z0, h, w), np.dtype(dtype))
            slab_lab = np.empty((z1 - z0, h, w), np.uint8)
            for box in _blocks((z1 - z0, h, w), (z1 - z0, chunks[1], chunks[2])):
                gbox = (slice(z0, z1), box[1], box[2])
                slab_img[:, box[1], box[2]], slab_lab[:, box[1], box[2]] = volume_block(
                    kind, gbox, shape, seed, channel=channel, dtype=dtype)
            for (f, offset, dt), slab in zip(files, (slab_img, slab_lab)):
                f.seek(offset + z0 * h * w * dt.itemsize)
                f.write(np.ascontiguousarray(slab).tobytes())
    finally:
        for f, _, _ in files:
            f.close()
