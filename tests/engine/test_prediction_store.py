"""Out-of-core prediction (engine/store.py, engine/inference.py) equals the in-memory blend.

The oracle is the whole-volume algorithm: each tiling's padded volume held whole, every window's
probabilities times its weight summed into a padded buffer and divided by the summed weights,
cropped, then averaged over the tilings.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from torch import nn

from fhcnn.data.lazy import LazyVolume
from fhcnn.engine.inference import predict_volume
from fhcnn.engine.sizes import gather, prediction_tilings, round_up
from fhcnn.engine.store import BlendStore, ConfusionSink, LabelSink, ProbabilitySink


def _oracle(model, volume, shifts, flip, window, shift_depth=True, overlap=0.5):
    m = model.size_multiple
    _, *size = volume.shape
    offsets = sorted({int(round(i * m / max(shifts, 1))) % m for i in range(max(shifts, 1))})
    acc, runs = None, 0
    with torch.no_grad():
        for o in offsets:
            oo = [o if (a > 0 or shift_depth) else 0 for a in range(3)]
            padded = [round_up(n + oa, m) for n, oa in zip(size, oo)]
            win = [min(p if (w <= 0 or w >= p) else round_up(w, m), p) for w, p in zip(window, padded)]
            x = gather(volume, [-oa for oa in oo], padded)
            starts = []
            for p, w in zip(padded, win):
                stride = max(m, int(w * (1 - overlap)) // m * m)
                st = list(range(0, p - w + 1, stride))
                if st[-1] != p - w:
                    st.append(p - w)
                starts.append(st)
            weight = torch.ones(())
            for ax, (w, p) in enumerate(zip(win, padded)):
                v = torch.sin(math.pi * (torch.arange(w, dtype=torch.float64) + 0.5) / w) if w < p \
                    else torch.ones(w, dtype=torch.float64)
                weight = weight[..., None] * v if ax else v
            for flipped in ([False, True] if flip else [False]):
                xt = x.flip(-1) if flipped else x
                out = torch.zeros((0,))
                cnt = torch.zeros(padded, dtype=torch.float64)
                for st in itertools.product(*starts):
                    sl = tuple(slice(s, s + w) for s, w in zip(st, win))
                    p = torch.softmax(model(xt[(slice(None),) + sl][None]).double(), 1)[0]
                    if out.numel() == 0:
                        out = torch.zeros((p.shape[0], *padded), dtype=torch.float64)
                    out[(slice(None),) + sl] += p * weight
                    cnt[sl] += weight
                res = out / cnt
                if flipped:
                    res = res.flip(-1)
                res = res[:, oo[0]:oo[0] + size[0], oo[1]:oo[1] + size[1], oo[2]:oo[2] + size[2]]
                acc = res if acc is None else acc + res
                runs += 1
    return (acc / runs).float()


class _Conv(nn.Module):
    """A small convolutional net that sees its window's context (and its borders)."""

    size_multiple = 4

    def __init__(self, k: int = 3) -> None:
        super().__init__()
        self.a = nn.Conv3d(2, 6, 3, padding=1)
        self.b = nn.Conv3d(6, k, 3, padding=1)

    def forward(self, x):
        return self.b(torch.tanh(self.a(x)) * x.mean((2, 3, 4), keepdim=True)[:, :1])


@pytest.mark.parametrize("shifts,flip,window,size,overlap", [
    (1, False, (0, 0, 0), (7, 9, 10), 0.5),
    (2, True, (4, 8, 4), (9, 13, 11), 0.5),
    (4, True, (8, 4, 8), (9, 10, 13), 0.5),
    (3, False, (4, 0, 8), (5, 16, 9), 0.5),
    (1, True, (8, 8, 8), (13, 17, 11), 0.0),
    (2, False, (8, 12, 8), (11, 19, 14), 0.25),
])
def test_chunked_prediction_equals_the_whole_volume_blend(tmp_path, shifts, flip, window, size, overlap) -> None:
    torch.manual_seed(1)
    model, vol = _Conv(), torch.randn(2, *size)
    want = _oracle(model, vol, shifts, flip, window, overlap=overlap)
    got = predict_volume(model, vol, shifts=shifts, flip=flip, window=window, overlap=overlap, chunk=3)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    # on disk, with a cache of a few chunks: most chunks are spilled and read back
    labels = np.full(size, 77, np.uint8)
    probs = np.zeros((3, *size), np.float16)
    predict_volume(model, LazyVolume.from_array(vol.numpy()), shifts=shifts, flip=flip, window=window,
                   overlap=overlap, chunk=3, work=tmp_path, cache_bytes=8000,
                   sinks=[LabelSink(labels), ProbabilitySink(probs)])
    np.testing.assert_array_equal(labels, want.argmax(0).numpy())
    np.testing.assert_allclose(probs, want.numpy(), atol=1e-3)
    assert list(tmp_path.iterdir()) == []  # chunks were spilled to a private folder, removed at the end


def test_every_chunk_is_finished_once_and_spills_stay_bounded(tmp_path) -> None:
    size, k = (12, 12, 12), 2
    tilings = prediction_tilings(size, (8, 8, 8), 4, 2, True, 2)
    writes: list[tuple] = []

    class Record:
        def write(self, box, prob):
            writes.append(tuple((b.start, b.stop) for b in box))

    store = BlendStore(size, k, (4, 4, 4), tilings, size, [Record()], work=tmp_path, cache_bytes=4 * 4**3 * k * 4)
    model = _Conv(k)
    model.size_multiple = 4
    from fhcnn.engine.inference import predict_into

    predict_into(model, LazyVolume.from_array(torch.randn(2, *size).numpy()), tilings, store)
    spilled = store.spilled_to
    store.close()
    assert spilled is not None and not spilled.exists()  # chunks went to disk; the folder is gone
    assert len(writes) == len(set(writes)) == 27
    assert store.peak_open_bytes <= 5 * 4 * 4**3 * k * 4  # the cache bound plus the chunk being opened


def test_confusion_sink_scores_like_the_whole_prediction() -> None:
    from fhcnn.engine.metrics import confusion_matrix

    torch.manual_seed(2)
    model, vol = _Conv(), torch.randn(2, 6, 10, 9)
    truth = np.random.default_rng(0).integers(0, 3, (6, 10, 9)).astype(np.uint8)
    truth[0] = 255
    sink = ConfusionSink(truth, 3)
    predict_volume(model, vol, shifts=2, flip=True, window=(4, 8, 4), chunk=4, sinks=[sink])
    want = predict_volume(model, vol, shifts=2, flip=True, window=(4, 8, 4)).argmax(0).numpy()
    np.testing.assert_array_equal(sink.matrix, confusion_matrix(want, truth, 3))


def test_resized_sink_passes_any_chunk_through_at_the_same_size_and_resizes_whole_planes() -> None:
    """``fhcnn segment`` puts its label sink behind :class:`Resized` whatever the scale: at
    ``data.scale = 1`` chunks smaller than a plane pass through; otherwise whole planes are
    resized like the whole volume."""
    from fhcnn.engine.sizes import resize_back
    from fhcnn.engine.store import Resized, TensorSink

    prob = torch.rand(2, 6, 10, 12)
    same = TensorSink(2, (6, 10, 12))
    sink = Resized(same, (10, 12), (10, 12))
    for d0 in (0, 3):
        for h0 in (0, 5):
            box = (slice(d0, d0 + 3), slice(h0, h0 + 5), slice(0, 12))
            sink.write(box, prob[(slice(None),) + box].numpy())
    torch.testing.assert_close(same.tensor, prob)
    big = TensorSink(2, (6, 20, 24))
    resized = Resized(big, (20, 24), (10, 12))
    resized.write((slice(0, 6), slice(0, 10), slice(0, 12)), prob.numpy())
    torch.testing.assert_close(big.tensor, resize_back(prob, (20, 24)))
    with pytest.raises(ValueError, match="whole"):
        resized.write((slice(0, 3), slice(0, 5), slice(0, 12)), prob[:, :3, :5].numpy())


@pytest.mark.parametrize("index", [None, 4])
@pytest.mark.parametrize("scaled", [(10, 12), (5, 6)])
def test_depth_mean_sink_adds_chunks_of_any_depth_up_to_the_mean_or_one_slice(index, scaled) -> None:
    """A change scene's band mean (or one band) is built from chunks that cut the depth: it
    equals the mean (or the slice) of the whole probability volume, resized once."""
    from fhcnn.engine.sizes import resize_back
    from fhcnn.engine.store import DepthMeanSink

    size = (10, 12)
    prob = torch.rand(2, 9, *scaled)
    target = np.zeros((2, *size), np.float32)
    sink = DepthMeanSink(target, size, scaled, depth=9, index=index)
    for d0 in (0, 4, 8):  # depth chunks of 4, 4 and 1, whole planes
        box = (slice(d0, min(9, d0 + 4)), slice(0, scaled[0]), slice(0, scaled[1]))
        sink.write(box, prob[(slice(None),) + box].numpy())
    plane = prob.mean(1) if index is None else prob[:, index]
    torch.testing.assert_close(torch.from_numpy(target), resize_back(plane, size), atol=1e-6, rtol=0)
