"""Video/mask readers and the synthetic video generator (fhcnn.data.video)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from fhcnn.data.video import (
    apply_classes,
    davis_palette,
    generate_video,
    mask_classes,
    open_video,
    read_masks,
    read_video,
    write_mask_png,
)
from fhcnn.errors import InputError
from tests.conftest import write_video_files


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("vid")
    video, masks = generate_video(root / "davis", frames=6, height=24, width=32, objects=2, seed=3)
    return root, video, masks


def test_generator_is_deterministic_and_has_objects(tiny):
    _, video, masks = tiny
    v2, m2 = generate_video(None, frames=6, height=24, width=32, objects=2, seed=3)
    assert video.shape == (6, 24, 32, 3) and video.dtype == np.uint8 and masks.shape == (6, 24, 32)
    np.testing.assert_array_equal(video, v2)
    np.testing.assert_array_equal(masks, m2)
    assert set(np.unique(masks)) <= {0, 1, 2} and (masks == 1).any() and (masks == 0).any()
    _, mb = generate_video(None, frames=3, height=24, width=32, objects=3, seed=1, binary=True)
    assert set(np.unique(mb)) <= {0, 1}


def test_davis_layout_roundtrip(tiny):
    root, video, masks = tiny
    seq = root / "davis" / "JPEGImages" / "480p" / "synthetic"
    assert (seq / "00000.jpg").is_file()
    for path in (root / "davis", seq):  # dataset root with one sequence, or the sequence folder
        frames, names = read_video(path)
        assert frames.shape == video.shape and names[:2] == ["00000", "00001"]
        assert np.abs(frames.astype(int) - video).mean() < 12  # JPEG
    ann = root / "davis" / "Annotations" / "480p" / "synthetic"
    ms = read_masks(ann, names, (24, 32))
    assert sorted(ms) == list(range(6))
    np.testing.assert_array_equal(np.stack([ms[i] for i in range(6)]), masks)
    assert Image.open(ann / "00000.png").mode == "P"


@pytest.mark.parametrize("frames, masks, refused", [
    ([f"{i:05d}" for i in range(6)], [f"{i:05d}" for i in range(1, 7)], "00006.png matches no frame"),
    (["00000", "00001", "00002", "00004", "00005", "00010"], [f"{i:05d}" for i in range(6)],
     "00003.png matches no frame"),
    ([f"{i:05d}" for i in range(3)], ["m10", "m11", "m12"], None),   # nothing in common: by order
])
def test_masks_pair_with_frames_by_name_or_number_else_all_by_order(tmp_path, frames, masks, refused):
    """A mask folder whose names partly match the frames is refused (with as many masks as
    frames, the unmatched one was paired by its place in the folder and replaced another's
    frame); by order only when no mask matches a frame by name or number."""
    (tmp_path / "m").mkdir()
    for k, name in enumerate(masks):
        Image.fromarray(np.full((4, 5), 255 * (k % 2), np.uint8)).save(tmp_path / "m" / f"{name}.png")
    if refused:
        with pytest.raises(InputError, match=refused):
            read_masks(tmp_path / "m", frames, (4, 5))
    else:
        ms = read_masks(tmp_path / "m", frames, (4, 5))
        assert sorted(ms) == [0, 1, 2] and [int(ms[i].max()) for i in range(3)] == [0, 255, 0]


def test_numbered_png_folder_partial_masks_gif_npy(tmp_path, tiny):
    _, video, masks = tiny
    (tmp_path / "f").mkdir()
    (tmp_path / "m").mkdir()
    for i, fr in enumerate(video):  # unpadded numbers: natural order, not lexical
        Image.fromarray(fr).save(tmp_path / "f" / f"img{i * 5}.png")
    for i in (0, 3):  # masks for some frames only, binary 0/255
        Image.fromarray(((masks[i] > 0) * 255).astype(np.uint8)).save(tmp_path / "m" / f"img{i * 5}.png")
    frames, names = read_video(tmp_path / "f")
    np.testing.assert_array_equal(frames, video)
    ms = read_masks(tmp_path / "m", names, (24, 32))
    assert sorted(ms) == [0, 3] and mask_classes(ms) == [0, 255]
    np.testing.assert_array_equal(apply_classes(ms[3], [0, 255]), masks[3] > 0)
    ims = [Image.fromarray(f) for f in video]
    ims[0].save(tmp_path / "v.gif", save_all=True, append_images=ims[1:])
    g, _ = read_video(tmp_path / "v.gif")
    assert g.shape == video.shape
    np.save(tmp_path / "v.npy", video)
    np.testing.assert_array_equal(read_video(tmp_path / "v.npy")[0], video)
    np.save(tmp_path / "g.npy", video[..., 0].astype(np.float32) / 255)  # grey floats in [0, 1]
    assert read_video(tmp_path / "g.npy")[0].shape == video.shape
    np.save(tmp_path / "m.npy", masks)
    assert len(read_masks(tmp_path / "m.npy", names)) == 6


def test_mp4(tmp_path, tiny):
    pytest.importorskip("imageio_ffmpeg")
    import imageio.v2 as imageio

    _, video, _ = tiny
    with imageio.get_writer(tmp_path / "v.mp4", fps=10, format="FFMPEG", macro_block_size=1) as w:
        for f in video:
            w.append_data(f)
    frames, names = read_video(tmp_path / "v.mp4")
    assert frames.shape == video.shape and len(names) == 6


def test_multi_object_palette_and_255_void():
    a = {0: np.array([[0, 1, 2], [255, 0, 1]])}
    assert mask_classes(a) == [0, 1, 2]  # 255 = void (unlabelled) when other objects exist
    np.testing.assert_array_equal(apply_classes(a[0], [0, 1, 2]), [[0, 1, 2], [255, 0, 1]])
    assert mask_classes({0: np.array([[0, 255]])}) == [0, 255]  # DAVIS 2016: 255 is the object
    pal = davis_palette()
    assert len(pal) == 768 and pal[3:6] == [128, 0, 0]


def test_write_mask_png(tmp_path):
    m = np.array([[0, 1], [2, 0]], np.uint8)
    write_mask_png(tmp_path / "a.png", m)
    im = Image.open(tmp_path / "a.png")
    assert im.mode == "P"
    np.testing.assert_array_equal(np.asarray(im), m)


def test_bad_inputs(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        read_video(tmp_path / "nope")
    (tmp_path / "x.gif").write_bytes(b"not a gif")
    with pytest.raises(InputError, match="cannot read video"):
        read_video(tmp_path / "x.gif")
    (tmp_path / "e").mkdir()
    with pytest.raises(InputError, match="no image frames"):
        read_video(tmp_path / "e")
    np.save(tmp_path / "m.npy", np.zeros((2, 4, 4), np.uint8))
    with pytest.raises(InputError, match="size"):
        read_masks(tmp_path / "m.npy", ["a", "b"], (5, 4))
    with pytest.raises(InputError, match="shape"):
        read_masks(tmp_path / "m.npy", ["a", "b", "c"])


def _video_files(tmp_path, video):
    """The same frames as a folder of PNGs, a GIF, an RGB, a grey and an RGBA ``.npy``, and an MP4
    where the video reader is installed."""
    fdir, _, _ = write_video_files(tmp_path, video)
    np.save(tmp_path / "grey.npy", video[..., 0].astype(np.uint16) * 200)
    np.save(tmp_path / "rgba.npy", np.concatenate([video, video[..., :1]], -1))
    paths = [fdir, tmp_path / "v.gif", tmp_path / "v.npy", tmp_path / "grey.npy", tmp_path / "rgba.npy"]
    try:
        import imageio.v2 as imageio
        import imageio_ffmpeg  # noqa: F401

        with imageio.get_writer(tmp_path / "v.mp4", fps=10, format="FFMPEG", macro_block_size=1) as w:
            for f in video:
                w.append_data(f)
        paths.append(tmp_path / "v.mp4")
    except ImportError:
        pass
    return paths


def test_open_video_reads_on_demand_what_read_video_reads(tmp_path, tiny):
    """Every format opened lazily: any box of frames, rows, columns and colours, one frame, one
    colour channel and the planar (colour-first) view equal the whole video read at once; only
    image files, GIFs and video files are marked to be copied once (``sequential``)."""
    from fhcnn.data.lazy import read_window

    _, video, _ = tiny
    rng = np.random.default_rng(0)
    for path in _video_files(tmp_path, video):
        whole, names = read_video(path)
        frames = open_video(path)
        assert frames.shape == whole.shape and frames.dtype == whole.dtype and frames.names == names
        assert frames.sequential == (path.suffix != ".npy")
        np.testing.assert_array_equal(np.asarray(frames), whole)
        for _ in range(5):
            lo = [int(rng.integers(0, n)) for n in whole.shape[:3]]
            box = tuple(slice(a, int(rng.integers(a + 1, n + 1))) for a, n in zip(lo, whole.shape[:3]))
            np.testing.assert_array_equal(frames[box], whole[box])
            c = int(rng.integers(0, 3))
            np.testing.assert_array_equal(frames[box + (c,)], whole[box + (c,)])
            np.testing.assert_array_equal(frames.channel(c)[box], whole[box + (c,)])
            np.testing.assert_array_equal(frames.planar()[(slice(None),) + box], np.moveaxis(whole[box], -1, 0))
        np.testing.assert_array_equal(frames[3], whole[3])
        np.testing.assert_array_equal(read_window(frames.channel(1), (-2, 20, 5), (4, 8, 8)),
                                      read_window(whole[..., 1], (-2, 20, 5), (4, 8, 8)))


def test_frame_labels_read_as_the_label_volume():
    """Masks of some frames read as the ``(T, H, W)`` volume with ``IGNORE`` elsewhere."""
    from fhcnn.apps.segment.inputs import FrameLabels
    from fhcnn.options import IGNORE

    rng = np.random.default_rng(1)
    masks = {1: rng.integers(0, 3, (5, 7)).astype(np.uint8), 4: rng.integers(0, 3, (5, 7)).astype(np.uint8)}
    whole = np.full((6, 5, 7), IGNORE, np.uint8)
    for k, m in masks.items():
        whole[k] = m
    lab = FrameLabels((6, 5, 7), masks)
    np.testing.assert_array_equal(np.asarray(lab), whole)
    for box in [(slice(0, 6), slice(1, 4), slice(2, 7)), (slice(3, 5),), (4, slice(0, 2)), (0,), (-2, 3)]:
        np.testing.assert_array_equal(lab[box], whole[box])
    dropped = np.where(np.arange(6)[:, None, None] == 4, IGNORE, whole)
    np.testing.assert_array_equal(np.asarray(lab.without([4])), dropped)


def test_masks_are_read_on_demand_and_decoded_masks_stay_bounded(tmp_path, monkeypatch):
    """``read_masks`` checks each mask in one pass and keeps none: a mask is read when asked for,
    from its PNG or one frame of the memory-mapped ``.npy``. :class:`FrameLabels` built on such
    readers reads as the dense label volume and keeps at most its cache's worth of frames."""
    import fhcnn.apps.segment.inputs as inputs_module
    from fhcnn.apps.segment.inputs import FrameLabels
    from fhcnn.data.video import MaskSet
    from fhcnn.options import IGNORE

    rng = np.random.default_rng(3)
    masks = rng.integers(0, 3, (7, 5, 6)).astype(np.uint8)
    masks[2] = 0
    (tmp_path / "m").mkdir()
    for i in (0, 2, 5):
        Image.fromarray(masks[i]).save(tmp_path / "m" / f"{i:05d}.png")
    floats = masks.astype(np.float32)
    floats[6, 0, 0] = np.nan
    np.save(tmp_path / "m.npy", floats)
    names = [f"{i:05d}" for i in range(7)]
    png, npy = read_masks(tmp_path / "m", names, (5, 6)), read_masks(tmp_path / "m.npy", names, (5, 6))
    assert isinstance(png, MaskSet) and sorted(png) == [0, 2, 5] and sorted(npy) == list(range(7))
    assert isinstance(npy._read[0].args[0], np.memmap)  # one frame read per access, not the file
    np.testing.assert_array_equal(png.distinct[2], [0])
    assert npy[6][0, 0] == 255 and npy.distinct[6].tolist() == [0, 1, 2, 255]  # NaN = unlabelled
    for k in png:
        np.testing.assert_array_equal(png[k], masks[k])
    reads: list[int] = []

    def reader(k):
        def read():
            reads.append(k)
            return masks[k]
        return read

    monkeypatch.setattr(inputs_module, "KEEP_FRAMES", 2)
    lab = FrameLabels((7, 5, 6), {k: reader(k) for k in (0, 2, 5, 6)}, cache_bytes=0)
    whole = np.full((7, 5, 6), IGNORE, np.uint8)
    whole[[0, 2, 5, 6]] = masks[[0, 2, 5, 6]]
    np.testing.assert_array_equal(np.asarray(lab), whole)
    assert sorted(reads) == [0, 2, 5, 6] and len(lab._cache) == 2  # the last two kept
    np.testing.assert_array_equal(lab[5:7, 1:3], whole[5:7, 1:3])
    assert sorted(reads) == [0, 2, 5, 6]  # frames 5 and 6 came from the cache
    np.testing.assert_array_equal(lab[0], whole[0])
    assert reads.count(0) == 2 and list(lab._cache) == [6, 0]
    assert lab.frames == [0, 2, 5, 6] and lab.without([2]).frames == [0, 5, 6]


def test_decoded_frames_read_in_order_decode_each_frame_once(tmp_path):
    """The one-time copy of a GIF or video file reads it slab by slab (several slabs per frame
    where a frame is larger than the read budget): reads in order go on with the same decoder,
    so every frame is decoded once (after the counting pass), not once per read from the first
    frame on; a read further back starts again and still gives the right frames."""
    from fhcnn.data.lazy import copy_to_zarr
    from fhcnn.data.video import _sequential

    rng = np.random.default_rng(0)
    video = rng.integers(0, 255, (12, 20, 24, 3)).astype(np.uint8)
    decoded, closed = [], []

    def frames():
        try:
            for i, f in enumerate(video):
                decoded.append(i)
                yield f
        finally:
            closed.append(True)

    source = _sequential(tmp_path / "clip.gif", frames)
    assert len(decoded) == 12  # the counting pass
    decoded.clear()
    copy = copy_to_zarr(source.planar(), tmp_path / "c.zarr", (1, 4, 8, 8), axis=1, max_bytes=3 * 20 * 24 // 2)
    np.testing.assert_array_equal(copy[...], np.moveaxis(video, -1, 0))
    assert decoded == list(range(12))  # each frame once, in order
    assert len(closed) == 2  # the counting pass's decoder and the copy's, closed at the last frame
    decoded.clear()
    np.testing.assert_array_equal(source.source[3:5], video[3:5])  # back: a new decoder (from frame 0 on)
    np.testing.assert_array_equal(source.source[7], video[7])      # forward: the same decoder goes on
    assert decoded == list(range(8))


def test_rgb_masks_keep_a_pure_blue_object(tmp_path):
    """An RGB mask's colour (0, 0, 255) is an object, not the void value 255: a red and a blue
    object give three classes, and a frame holding only the blue one is not refused."""
    from fhcnn.apps.segment.inputs import load_video_inputs

    rng = np.random.default_rng(0)
    video = rng.integers(0, 255, (4, 8, 12, 3), dtype=np.uint8)
    np.save(tmp_path / "v.npy", video)
    truth = np.zeros((4, 8, 12), np.uint8)
    truth[:, 1:3, 1:4] = 1
    truth[:, 5:7, 6:10] = 2
    truth[3, 1:3, 1:4] = 0  # the last frame: only the blue object
    colours = np.array([(0, 0, 0), (255, 0, 0), (0, 0, 255)], np.uint8)
    md = tmp_path / "masks"
    md.mkdir()
    for t, m in enumerate(truth):
        Image.fromarray(colours[m]).save(md / f"{t:05d}.png")
    inputs = load_video_inputs(tmp_path / "v.npy", md, label_frames="0,1,3")
    assert len(inputs.classes) == 3
    blue = inputs.classes.index(int(read_masks(md, [f"{t:05d}" for t in range(4)])[0][5, 6]))
    red = inputs.classes.index(int(read_masks(md, [f"{t:05d}" for t in range(4)])[0][1, 1]))
    expected = np.select([truth == 1, truth == 2], [red, blue], 0)
    for t in (0, 1, 3):
        np.testing.assert_array_equal(inputs.labels[t], expected[t])


def test_grey_masks_with_alpha_are_label_indices(tmp_path):
    """A grey-with-alpha (LA) mask holds label indices like a grey one: 255 is void among several
    objects, not a class, and LA masks mix with grey ones."""
    from fhcnn.apps.segment.inputs import load_video_inputs

    rng = np.random.default_rng(0)
    np.save(tmp_path / "v.npy", rng.integers(0, 255, (4, 8, 12, 3), dtype=np.uint8))
    truth = np.zeros((4, 8, 12), np.uint8)
    truth[:, 1:3, 1:4] = 1
    truth[:, 5:7, 6:10] = 2
    truth[:, 0, :] = 255  # void
    md = tmp_path / "masks"
    md.mkdir()
    for t, m in enumerate(truth):
        if t % 2:
            Image.fromarray(m, "L").save(md / f"{t:05d}.png")
        else:
            Image.fromarray(np.stack([m, np.full_like(m, 255)], -1), "LA").save(md / f"{t:05d}.png")
    assert Image.open(md / "00000.png").mode == "LA"
    inputs = load_video_inputs(tmp_path / "v.npy", md, label_frames="0,1,2")
    assert inputs.classes == [0, 1, 2]
    for t in (0, 1, 2):
        np.testing.assert_array_equal(inputs.labels[t], truth[t])


def test_npy_masks_with_unlabelled_frames(tmp_path):
    """A ``.npy`` label array filled with 255 (or NaN) but for a few labelled frames: those frames
    are the masks (the default label frames), not a 0/255 encoding at odds with the others."""
    from fhcnn.apps.segment.inputs import load_video_inputs

    rng = np.random.default_rng(0)
    np.save(tmp_path / "v.npy", rng.integers(0, 255, (6, 8, 12, 3), dtype=np.uint8))
    truth = np.zeros((6, 8, 12), np.uint8)
    truth[:, 1:3, 1:4] = 1
    truth[:, 5:7, 6:10] = 2
    for fill, dtype in ((255, np.uint8), (np.nan, np.float32)):
        labels = np.full(truth.shape, fill, dtype)
        labels[[1, 4]] = truth[[1, 4]]
        np.save(tmp_path / "m.npy", labels)
        inputs = load_video_inputs(tmp_path / "v.npy", tmp_path / "m.npy")
        assert inputs.label_frames == [1, 4] and inputs.classes == [0, 1, 2] and inputs.eval_labels is None
        np.testing.assert_array_equal(inputs.labels[4], truth[4])
    np.save(tmp_path / "m.npy", np.full(truth.shape, 255, np.uint8))
    with pytest.raises(InputError, match="label no pixel"):
        load_video_inputs(tmp_path / "v.npy", tmp_path / "m.npy")


def test_tiff_frames_stored_plane_by_plane(tmp_path):
    """An RGB TIFF frame stored plane by plane (planar configuration 'separate', which tifffile
    reads as (3, H, W)) is read as (H, W, 3); a frame of three grey pages is refused, naming it."""
    tifffile = pytest.importorskip("tifffile")
    rng = np.random.default_rng(0)
    video = rng.integers(0, 255, (3, 8, 12, 3), dtype=np.uint8)
    for name, kw in (("planar", dict(photometric="rgb", planarconfig="separate")),
                     ("pages", dict(photometric="minisblack"))):
        d = tmp_path / name
        d.mkdir()
        for t, frame in enumerate(video):
            tifffile.imwrite(d / f"{t:05d}.tif", np.moveaxis(frame, -1, 0), **kw)
    np.testing.assert_array_equal(read_video(tmp_path / "planar")[0], video)
    with pytest.raises(InputError, match="00000.tif holds an array of shape"):
        open_video(tmp_path / "pages")


def test_float_tiff_masks_are_label_indices(tmp_path):
    """A float32 TIFF mask of whole numbers holds label indices (255 void among several objects),
    like an integer one; one with fractions is refused, naming the file."""
    tifffile = pytest.importorskip("tifffile")
    truth = np.zeros((3, 8, 12), np.float32)
    truth[:, 1:3, 1:4] = 1
    truth[:, 5:7, 6:10] = 2
    truth[:, 0] = 255
    d = tmp_path / "masks"
    d.mkdir()
    for t, m in enumerate(truth):
        tifffile.imwrite(d / f"{t:05d}.tif", m)
    names = [f"{t:05d}" for t in range(3)]
    masks = read_masks(d, names, (8, 12))
    assert mask_classes(masks) == [0, 1, 2]
    np.testing.assert_array_equal(masks[1], truth[1])
    tifffile.imwrite(d / "00001.tif", truth[1] + 0.5)
    with pytest.raises(InputError, match="00001.tif holds values that are not whole numbers"):
        read_masks(d, names, (8, 12))


def test_frames_whose_numbers_disagree_on_their_order_are_refused(tmp_path):
    """Frames are ordered by the last number in their names; time-stamped names whose other
    numbers order them differently (12-31-01 before 12-30-20 by seconds alone) are refused, not
    shuffled. Names whose numbers agree keep their order."""
    stamps = ["12-30-00", "12-30-20", "12-30-40", "12-31-01", "12-31-21"]
    for folder, names in (("stamps", [f"2020-01-05_{s}" for s in stamps]),
                          ("agree", [f"cam2_frame{k}" for k in (1, 2, 10, 11, 30)])):
        (tmp_path / folder).mkdir()
        for k, name in enumerate(names):
            Image.fromarray(np.full((4, 5, 3), 40 * k, np.uint8)).save(tmp_path / folder / f"{name}.png")
    with pytest.raises(InputError, match="12-31-01.png and 2020-01-05_12-30-20.png"):
        open_video(tmp_path / "stamps")
    video = open_video(tmp_path / "agree")
    assert video.names == [f"cam2_frame{k}" for k in (1, 2, 10, 11, 30)]
    assert [int(video[t][0, 0, 0]) for t in range(5)] == [0, 40, 80, 120, 160]


def _drawn_mask(size, resample, colour=None):
    """A mask drawn at 512x512 with hard edges (an ellipse and a bar, 255 on 0), resized to
    ``size`` with ``resample`` (``Image.NEAREST`` keeps hard edges); ``colour``: drawn in that
    RGB colour on black instead."""
    from PIL import ImageDraw

    big = Image.new("RGB" if colour else "L", (512, 512), 0)
    fill = colour or 255
    ImageDraw.Draw(big).ellipse([100, 120, 400, 380], fill=fill)
    ImageDraw.Draw(big).rectangle([20, 20, 90, 200], fill=fill)
    return big.resize((size, size), resample)


@pytest.mark.parametrize("resample", ["BILINEAR", "LANCZOS", "BICUBIC", "BOX"])
@pytest.mark.parametrize("size", [64, 480])
@pytest.mark.parametrize("colour", [None, (200, 30, 30)])
def test_antialiased_masks_are_refused(tmp_path, resample, size, colour):
    """A grey or RGB mask resized smoothly (or drawn with antialiasing) holds dozens of edge
    shades between 0 and 255: each became a class of its own and the object (255, "unlabelled"
    among several values) was left out of training, exit 0 (76 classes from a 0/255 circle).
    Refused in one line naming the file, the shades and the fix; the same masks resized
    nearest-neighbour are read as two classes."""
    names = [f"{t:05d}" for t in range(2)]
    for mode, exact in ((resample, False), ("NEAREST", True)):
        md = tmp_path / mode
        md.mkdir()
        for n in names:
            _drawn_mask(size, getattr(Image.Resampling, mode), colour).save(md / f"{n}.png")
        if exact:
            masks = read_masks(md, names, (size, size))
            assert len(mask_classes(masks)) == 2
        else:
            with pytest.raises(InputError, match=rf"^mask {md}/00000.png: \d+ of its \d+ values \(.*\) lie only "
                                                 r"between other values on the edges of regions, .* antialiased"):
                read_masks(md, names, (size, size))


def test_masks_with_thin_classes_are_not_blends(tmp_path):
    """What the blend check must leave alone: a thin boundary class between background and
    foreground (one value that lies between two others), 1-pixel scribbles on unlabelled 255,
    and touching objects of a palette mask."""
    boundary = np.zeros((32, 32), np.uint8)
    boundary[8:24, 8:24] = 2
    boundary[7, 7:25] = boundary[24, 7:25] = boundary[7:25, 7] = boundary[7:25, 24] = 1
    scribbles = np.full((32, 32), 255, np.uint8)
    scribbles[4, 2:30], scribbles[12, 2:30], scribbles[20, 2:30], scribbles[2:30, 16] = 0, 1, 2, 3
    touching = np.zeros((32, 32), np.uint8)
    touching[4:20, 4:14], touching[4:20, 14:24], touching[20:28, 4:24] = 1, 2, 3
    for name, m, classes in (("boundary", boundary, 3), ("scribbles", scribbles, 4), ("touching", touching, 4)):
        d = tmp_path / name
        d.mkdir()
        write_mask_png(d / "00000.png", m)
        assert len(mask_classes(read_masks(d, ["00000"], (32, 32)))) == classes, name
