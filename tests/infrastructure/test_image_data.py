"""Image loaders of the autoencoder: digits, LFW, MNIST IDX, folders (on small files written here)."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from fhcnn.data.images import ImageSet, load_dataset, load_digits, load_image_folder, load_lfw, load_mnist_idx, read_idx
from fhcnn.errors import InputError

PIL = pytest.importorskip("PIL.Image")


def _write_idx(path: Path, arr: np.ndarray, code: int = 0x08, gz: bool = False, magic=None) -> Path:
    head = bytes([0, 0, code, arr.ndim]) if magic is None else magic
    head += b"".join(struct.pack(">i", s) for s in arr.shape)
    data = head + arr.astype(np.dtype(">u1") if code == 0x08 else np.dtype(">f4")).tobytes()
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def test_digits_padded_to_16():
    pytest.importorskip("sklearn")
    s = load_digits()
    assert len(s) == 1797 and s.images.shape == (1797, 1, 16, 16)
    x = s.batch()
    assert x.min() >= 0 and x.max() <= 1
    assert x[:, :, :4].abs().sum() == 0 and x[:, :, :, 12:].abs().sum() == 0  # zero border
    assert s.labels is not None and set(s.labels.tolist()) == set(range(10))


def test_lfw_subset_ships_offline():
    pytest.importorskip("skimage")
    s = load_lfw(32)
    assert s.images.shape == (200, 1, 32, 32) and s.batch().max() <= 1


@pytest.mark.parametrize("gz", [False, True])
def test_idx_roundtrip_and_mnist_loader(tmp_path, gz):
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, size=(7, 28, 28)).astype(np.uint8)
    labels = rng.integers(0, 10, size=7).astype(np.uint8)
    suffix = ".gz" if gz else ""
    p = _write_idx(tmp_path / f"t10k-images-idx3-ubyte{suffix}", imgs, gz=gz)
    _write_idx(tmp_path / f"t10k-labels-idx1-ubyte{suffix}", labels, gz=gz)
    assert np.array_equal(read_idx(p), imgs)
    s = load_mnist_idx(p)
    assert s.images.shape == (7, 1, 32, 32) and s.images.dtype == torch.uint8
    assert torch.equal(s.images[:, 0, 2:30, 2:30], torch.from_numpy(imgs))
    assert s.labels.tolist() == labels.tolist()
    # a folder works too, and the limit
    assert len(load_mnist_idx(tmp_path, limit=3)) == 3
    f = _write_idx(tmp_path / "floats.idx", rng.normal(size=(2, 3)).astype(np.float32), code=0x0D)
    assert read_idx(f).dtype == np.float32 and read_idx(f).shape == (2, 3)


def test_idx_wrong_magic_is_a_clear_error(tmp_path):
    arr = np.zeros((2, 4, 4), np.uint8)
    bad = _write_idx(tmp_path / "bad-images-idx3-ubyte", arr, magic=bytes([0x12, 0x34, 0x08, 3]))
    with pytest.raises(InputError, match="not an IDX file.*magic"):
        read_idx(bad)
    png_like = tmp_path / "x-images-idx3-ubyte.gz"
    png_like.write_bytes(gzip.compress(b"\x89PNG\r\n\x1a\nrest"))
    with pytest.raises(InputError, match="not an IDX file"):
        load_mnist_idx(png_like)
    short = _write_idx(tmp_path / "short", arr)
    short.write_bytes(short.read_bytes()[:-5])
    with pytest.raises(InputError, match="needs"):
        read_idx(short)
    with pytest.raises(InputError, match="no such file"):
        read_idx(tmp_path / "missing")
    with pytest.raises(InputError, match="no .*images-idx3"):
        load_mnist_idx(tmp_path / "empty" if (tmp_path / "empty").mkdir() is None else tmp_path)


def _save(path: Path, arr: np.ndarray) -> Path:
    PIL.fromarray(arr).save(path)
    return path


def test_folder_same_size_and_resize(tmp_path):
    rng = np.random.default_rng(0)
    for i in range(3):
        _save(tmp_path / f"{i}.png", rng.integers(0, 256, (12, 20, 3), dtype=np.uint8))
    (tmp_path / "notes.txt").write_text("ignored")
    s = load_image_folder(tmp_path)
    assert s.images.shape == (3, 3, 12, 20) and len(s.files) == 3
    r = load_image_folder(tmp_path, size=8)
    assert r.images.shape == (3, 3, 8, 8)
    g = load_image_folder(tmp_path, size=8, color="gray", crop=10)
    assert g.images.shape == (3, 1, 8, 8)


@pytest.mark.parametrize("size", [None, 8])
def test_folder_whose_first_image_is_grey_keeps_the_colour_of_the_others(tmp_path, size):
    """color="auto" took the first file's mode for all: a grey first image made every colour
    image of the folder grey, without a word. Now grey images are repeated to RGB instead."""
    rng = np.random.default_rng(1)
    grey = rng.integers(0, 256, (12, 12), dtype=np.uint8)
    colour = [rng.integers(0, 256, (12, 12, 3), dtype=np.uint8) for _ in range(2)]
    _save(tmp_path / "0.png", grey)
    for i, c in enumerate(colour, 1):
        _save(tmp_path / f"{i}.png", c)
    s = load_image_folder(tmp_path, size=size)
    assert s.channels == 3
    if size is None:
        assert torch.equal(s.images[0], torch.from_numpy(np.repeat(grey[None], 3, 0)))
        assert torch.equal(s.images[1], torch.from_numpy(colour[0]).permute(2, 0, 1))
    else:
        assert not torch.equal(s.images[1, 0], s.images[1, 1])  # still in colour
    assert load_image_folder(tmp_path, size=size, color="gray").channels == 1


def test_folder_center_crop_is_centered(tmp_path):
    a = np.zeros((10, 30), np.uint8)
    a[:, 10:20] = 255  # the centre square is white, the sides black
    _save(tmp_path / "a.png", a)
    s = load_image_folder(tmp_path, size=5)
    assert s.images.shape == (1, 1, 5, 5) and s.images.min() > 200


def test_folder_mixed_sizes_without_resize_is_a_clear_error(tmp_path):
    _save(tmp_path / "a.png", np.zeros((8, 8), np.uint8))
    _save(tmp_path / "b.png", np.zeros((16, 8), np.uint8))
    with pytest.raises(InputError, match=r"mixed sizes.*a\.png is 8x8.*b\.png is 8x16.*--resize"):
        load_image_folder(tmp_path)
    assert load_image_folder(tmp_path, size=8).images.shape == (2, 1, 8, 8)


def test_folder_errors(tmp_path):
    with pytest.raises(InputError, match="no images"):
        load_image_folder(tmp_path)
    (tmp_path / "sub").mkdir()
    with pytest.raises(InputError, match="sub-folders"):
        load_image_folder(tmp_path)
    with pytest.raises(InputError, match="no such folder"):
        load_image_folder(tmp_path / "nope")
    (tmp_path / "broken.png").write_bytes(b"not an image")
    with pytest.raises(InputError, match="broken.png.*cannot read"):
        load_image_folder(tmp_path)


def test_imageset_split_and_dispatch():
    s = ImageSet(torch.rand(10, 1, 4, 4), torch.arange(10))
    tr, ev = s.split(3, seed=0)
    assert len(tr) == 7 and len(ev) == 3
    assert sorted(tr.labels.tolist() + ev.labels.tolist()) == list(range(10))
    tr2, ev2 = s.split(0.2, shuffle=False)
    assert ev2.labels.tolist() == [8, 9]
    with pytest.raises(InputError, match="needs a PATH"):
        load_dataset("folder")
    with pytest.raises(InputError, match="must be one of"):
        load_dataset("cifar")


def _png16_rgb(path: Path, h: int = 4, w: int = 5) -> Path:
    """A 16-bit colour PNG written by hand (Pillow writes none)."""
    import zlib

    rows = np.arange(h * w * 3, dtype=">u2").reshape(h, w * 3) * 1000
    raw = b"".join(b"\x00" + r.tobytes() for r in rows)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    head = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", head) + chunk(b"IDAT", zlib.compress(raw))
                     + chunk(b"IEND", b""))
    return path


def test_a_16_bit_colour_png_is_refused_with_a_way_the_reader_takes(tmp_path):
    """The folder reader (``fhcnn vae --dataset folder``) reads no ``.npy``: its refusal of a
    16-bit colour PNG names what it does read; the frame reader (``fhcnn segment``) keeps its own."""
    from fhcnn.data.images import read_image
    from fhcnn.data.video import _read_frame

    p = _png16_rgb(tmp_path / "a.png")
    with pytest.raises(InputError, match="16-bit colour") as e:
        read_image(p)
    assert ".npy" not in str(e.value) and "16-bit grey PNG or TIFF" in str(e.value)
    with pytest.raises(InputError, match=r"16-bit colour.*\.npy"):
        _read_frame(p)
