"""Peak memory of the one-time chunked copy of a compressed input, against its slice size.

Inputs that are slow to read by window (``.nii.gz``, compressed TIFF stacks) are copied once
into a zarr array (:func:`fhcnn.data.lazy.copy_to_zarr`, chunks of 64 per side) before a run
reads windows at random. Each measured file (float32 ``.nii.gz`` and zlib-compressed uint16
TIFF stacks; a cube, a flat volume of few large slices, and a wide one) is written in this
process, opened as ``fhcnn volume`` opens it (:func:`fhcnn.data.volumes.open_volume`) and
copied in a fresh process (``python -m fhcnn.bench.copy_memory '<job>'``) that reports the peak
resident set of the copy (``VmHWM``, reset after opening), its resident set before, its
seconds, and whether the copy went through the staging file (a slab one chunk thick larger
than the 16 MiB read budget). The voxel values are a cheap pattern (the memory does not depend
on them).

Writes ``copy_memory.json`` and ``copy_memory.png``.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

__all__ = ["run", "work", "CASES", "QUICK_CASES", "worker", "NAME"]

NAME = "copy_memory"

#: (format, stored shape): NIfTI shapes are (X, Y, Z), slices along Z; TIFF shapes (pages, rows,
#: columns), slices along the pages (more than 8 of them: fewer would read as channels).
CASES: list[tuple[str, tuple[int, int, int]]] = [
    ("nii.gz", (256, 256, 256)), ("nii.gz", (2048, 2048, 16)), ("nii.gz", (4096, 4096, 4)),
    ("tif", (256, 256, 256)), ("tif", (16, 2048, 2048)), ("tif", (12, 3072, 3072)),
]
QUICK_CASES: list[tuple[str, tuple[int, int, int]]] = [("nii.gz", (64, 64, 64)), ("nii.gz", (1024, 1024, 8)),
                                                       ("tif", (8, 512, 512))]


def work(quick: bool) -> int:
    return len(QUICK_CASES if quick else CASES)


def _write(path: Path, fmt: str, shape: tuple[int, int, int]) -> None:
    """A float32 NIfTI (identity affine) or a zlib-compressed uint16 TIFF stack of ``shape`` (a
    pattern that compresses fast), made in memory (at most 256 MiB) and written."""
    import numpy as np

    if fmt == "nii.gz":
        import nibabel as nib

        a = np.empty(shape, np.float32)
        ramp = np.add.outer(np.arange(shape[0]), np.arange(shape[1])).astype(np.float32)
        for k in range(shape[2]):
            a[:, :, k] = (ramp * (k + 1)) % 251
        nib.save(nib.Nifti1Image(a, np.eye(4)), str(path))
        return
    import tifffile

    ramp = np.add.outer(np.arange(shape[1]), np.arange(shape[2]))
    stack = np.empty(shape, np.uint16)
    for k in range(shape[0]):
        stack[k] = (ramp * (k + 1)) % 4093
    tifffile.imwrite(str(path), stack, compression="zlib")


def worker(job: dict[str, Any]) -> dict[str, Any]:
    """Open ``job["file"]`` as ``fhcnn volume`` does and copy its channel once; the peaks."""
    import math

    import numpy as np

    from ..data.lazy import SLAB_BYTES, copy_to_zarr
    from ..data.volumes import open_volume
    from ._worker import _reset_peak, current_rss, peak_rss

    opened = open_volume(job["file"])
    channel = opened.channels[0]
    shape = tuple(int(n) for n in channel.shape)
    itemsize = np.dtype(channel.dtype).itemsize
    axis = opened.slab_axis
    chunks = (64, 64, 64)
    staged = itemsize * math.prod(shape) // shape[axis] * min(64, shape[axis]) > SLAB_BYTES
    rec: dict[str, Any] = {"shape": list(shape), "dtype": str(np.dtype(channel.dtype)), "slab_axis": axis,
                           "compressed": opened.compressed, "staged": staged,
                           "volume_bytes": itemsize * math.prod(shape)}
    rec["rss_before"] = current_rss()
    _reset_peak()
    t0 = time.perf_counter()
    copy = copy_to_zarr(channel, Path(job["out"]) / "copy.zarr", chunks, axis=axis)
    rec["seconds"] = round(time.perf_counter() - t0, 2)
    rec["peak_rss"] = peak_rss()
    rec["chunks"] = list(copy.chunks)
    return rec


def _launch(job: dict[str, Any]) -> dict[str, Any]:
    from ..training.distributed import launch_env

    env = launch_env(1, MALLOC_MMAP_THRESHOLD_="65536")
    proc = subprocess.run([sys.executable, "-m", "fhcnn.bench.copy_memory", json.dumps(job)], env=env,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"copy_memory worker failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def run(out_dir: str | Path, quick: bool = False, device: str = "cpu",
        tick: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Measure every case of :data:`CASES` (``quick``: :data:`QUICK_CASES`); writes
    ``copy_memory.json`` and ``.png`` into ``out_dir``. The files (up to 256 MiB uncompressed)
    and copies are scratch in the system's temporary folder (``TMPDIR``), removed after each."""
    import tempfile

    from ._common import write_json
    from .reference import environment

    out = Path(out_dir)
    rows: list[dict[str, Any]] = []
    result = {"rows": rows, "environment": environment(device)}
    for fmt, shape in QUICK_CASES if quick else CASES:
        scratch = Path(tempfile.mkdtemp(prefix="fhcnn-copy-memory-"))
        try:
            path = scratch / f"volume.{fmt}"
            _write(path, fmt, shape)
            rec = _launch({"file": str(path), "out": str(scratch)})
            rows.append({"format": fmt, "stored_shape": list(shape), "file_bytes": path.stat().st_size, **rec})
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        write_json(out / f"{NAME}.json", result)  # what is measured so far
        if tick:
            tick(f"{fmt} {'x'.join(map(str, shape))}")
    plot(result, out / f"{NAME}.png")
    return result


def plot(result: dict[str, Any], path: Path) -> None:
    """The copy's peak above the resident set before it, against the volume's size, per format,
    beside the volume's own size."""
    from ._common import pyplot, save_figure

    rows = result["rows"]
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.8))
    for fmt in dict.fromkeys(r["format"] for r in rows):
        pts = sorted((r["volume_bytes"] / 2**20, (r["peak_rss"] - r["rss_before"]) / 2**20) for r in rows
                     if r["format"] == fmt)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "o", label=fmt)
    sizes = sorted({r["volume_bytes"] / 2**20 for r in rows})
    ax.plot(sizes, sizes, "--", color="grey", label="the whole volume")
    ax.set_xscale("log")
    ax.set_xlabel("volume, uncompressed (MiB)")
    ax.set_ylabel("peak RSS of the copy above the start (MiB)")
    ax.set_ylim(bottom=0)
    ax.legend()
    fig.tight_layout()
    save_figure(fig, path)


if __name__ == "__main__":
    print(json.dumps(worker(json.loads(sys.argv[1]))))
