"""Property test of issue 13: ``fhcnn segment`` and ``fhcnn change`` on generated malformed and
unusual inputs (sizes, dtypes, bit depths, mask encodings, missing and extra files, NaN).

Either exit 0 with every documented output valid, or exit 2 with one ``error:`` line; in both
cases no input file changed, and a refused run leaves no OUT behind.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from .test_files_safety import run_cli, tree_hash

SETTINGS = settings(max_examples=15, deadline=None, database=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
TINY = ["--config", "video-tiny", "--quiet", "--set", "train.steps=2"]


def _check(argv: list[object], inputs: Path, out: Path) -> tuple[int, list[str]]:
    before = tree_hash(inputs)
    rc, err = run_cli([str(a) for a in argv])
    assert rc in (0, 2), (rc, err)
    if os.environ.get("FHCNN_SHOW_CASES"):
        print("exit", rc, err[:1])
    if rc == 2:
        assert len(err) == 1 and err[0].startswith("error: "), err
        assert not out.exists(), "a refused run left OUT behind"
    assert tree_hash(inputs) == before, "an input file changed"
    if rc == 0:
        marker = json.loads((out / "run.json").read_text())
        assert marker["files"] and all(not Path(f).is_absolute() and ".." not in f for f in marker["files"])
        m = json.loads((out / "metrics.json").read_text())
        if "miou" in m:
            assert m["miou"] is not None and 0 <= m["miou"] <= 1
    return rc, err


@st.composite
def videos(draw: st.DrawFn) -> dict:
    t = draw(st.integers(1, 5))
    h, w = draw(st.integers(4, 20)), draw(st.integers(4, 20))
    return {
        "t": t, "h": h, "w": w,
        # mostly valid inputs (so the success path is exercised), some malformed ones
        "frames": draw(st.sampled_from(["npy", "png", "png16", "tiff16"])),
        "dtype": draw(st.sampled_from(["uint8", "uint16", "float32", "float64", "int64", "bool"])),
        "scale": draw(st.sampled_from([255.0, 4095.0, 6e4, 1.0])),
        "nan": draw(st.integers(0, 5)) == 0,
        "masks": draw(st.sampled_from(["npy", "png", "npy", "png", "jpg"])),
        "encoding": draw(st.sampled_from(["01", "0255", "multi", "01", "mixed", "all0", "float"])),
        "mask_size": draw(st.sampled_from(["same", "same", "same", "other"])),
        "missing_mask": draw(st.integers(0, 3)) == 0,
        "extra": draw(st.sampled_from([None, None, None, "notes.txt", "cover.png", "broken"])),
        "label_frames": draw(st.sampled_from([None, None, None, "0", "0,-1", "99", "a"])),
        "seed": draw(st.integers(0, 3)),
    }


def _write_inputs(spec: dict, root: Path) -> tuple[Path, Path]:
    rng = np.random.default_rng(spec["seed"])
    t, h, w = spec["t"], spec["h"], spec["w"]
    raw = rng.random((t, h, w, 3))
    yy, xx = np.mgrid[0:h, 0:w]
    obj = ((yy - h / 2) ** 2 + (xx - w / 2) ** 2 < (min(h, w) / 3) ** 2)
    masks = np.broadcast_to(obj, (t, h, w)).astype(np.int64)
    raw[masks.astype(bool)] *= 0.3  # the object is darker
    data = root / "in"
    data.mkdir()
    if spec["frames"] == "npy":
        a = (raw * spec["scale"]).astype(spec["dtype"]) if spec["dtype"] != "bool" else raw > 0.5
        if spec["nan"] and a.dtype.kind == "f":
            a[0, 0, 0, 0] = np.nan
        video = data / "video.npy"
        np.save(video, a)
    else:
        video = data / "frames"
        video.mkdir()
        for i in range(t):
            if spec["frames"] == "png":
                Image.fromarray((raw[i] * 255).astype(np.uint8)).save(video / f"{i:05d}.png")
            elif spec["frames"] == "png16":
                Image.fromarray((raw[i].mean(-1) * 60000).astype(np.uint16)).save(video / f"{i:05d}.png")
            else:
                import tifffile

                tifffile.imwrite(video / f"{i:05d}.tif", (raw[i] * 4095).astype(np.uint16),
                                 photometric="rgb")
        if spec["extra"] == "cover.png":
            Image.fromarray((raw[0] * 255).astype(np.uint8)).save(video / "cover.png")
        elif spec["extra"] == "notes.txt":
            (video / "notes.txt").write_text("my notes")
        elif spec["extra"] == "broken":
            os.symlink(root / "gone.png", video / f"{t:05d}.png")
    enc = spec["encoding"]
    m = masks.copy()
    if enc == "0255":
        m *= 255
    elif enc == "mixed":
        m[1:] *= 255
    elif enc == "multi":
        m[:, : h // 2] *= 2
    elif enc == "all0":
        m[:] = 0
    if spec["mask_size"] == "other":
        m = m[:, : max(1, h - 1)]
    if spec["masks"] == "npy":
        labels = data / "masks.npy"
        np.save(labels, m.astype(np.float32) if enc == "float" else m.astype(np.uint8))
    else:
        labels = data / "masks"
        labels.mkdir()
        for i in range(t):
            if spec["missing_mask"] and i == t - 1 and t > 1:
                continue
            ext = spec["masks"]
            Image.fromarray(m[i].astype(np.uint8)).save(labels / f"{i:05d}.{ext}")
    return video, labels


@SETTINGS
@given(spec=videos())
def test_segment_on_generated_inputs(spec: dict) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        video, labels = _write_inputs(spec, root)
        out = root / "out"
        argv: list[object] = ["segment", video, "--labels", labels, "--out", out, *TINY]
        if spec["label_frames"] is not None:
            argv += ["--label-frames", spec["label_frames"]]
        rc, err = _check(argv, root / "in", out)
        if rc == 0:
            pred = np.load(out / "prediction.npy")
            assert pred.shape == (spec["t"], spec["h"], spec["w"]) and pred.dtype == np.uint8
            assert len(list((out / "masks").glob("*.png"))) == spec["t"]
            for name in ("overlay.gif", "config.yaml", "model.safetensors", "metrics.jsonl"):
                assert (out / name).is_file(), name
            # the same command again is refused, and leaves the run as it was
            before = tree_hash(out)
            rc2, err2 = run_cli([str(a) for a in argv])
            assert rc2 == 2 and len(err2) == 1 and "already holds a run" in err2[0]
            assert tree_hash(out) == before


@st.composite
def scenes(draw: st.DrawFn) -> dict:
    return {
        "h": draw(st.integers(2, 12)), "w": draw(st.integers(2, 12)), "b": draw(st.integers(1, 5)),
        "dtype": draw(st.sampled_from(["float32", "float64", "uint16", "int8", "bool"])),
        "nan": draw(st.sampled_from(["none", "none", "none", "some", "all"])),
        "same": draw(st.booleans()) and draw(st.booleans()),
        "after_shape": draw(st.sampled_from(["same", "same", "same", "other"])),
        "labels": draw(st.sampled_from(["01", "01", "png", "nanfloat", "only1", "values", "png255", "jpg"])),
        "seed": draw(st.integers(0, 3)),
    }


@SETTINGS
@given(spec=scenes())
def test_change_on_generated_inputs(spec: dict) -> None:
    rng = np.random.default_rng(spec["seed"])
    h, w, b = spec["h"], spec["w"], spec["b"]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        data = root / "in"
        data.mkdir()
        before = rng.random((h, w, b)) * 100
        after = before.copy() if spec["same"] else before + rng.random((h, w, b)) * 50
        if spec["after_shape"] == "other":
            after = after[:, :, :1] if b > 1 else np.concatenate([after, after], -1)
        cubes = []
        for name, c in (("before", before), ("after", after)):
            c = c.astype(spec["dtype"]) if spec["dtype"] != "bool" else c > 50
            if spec["nan"] != "none" and c.dtype.kind == "f":
                c[0, 0] = np.nan
                if spec["nan"] == "all":
                    c[:] = np.nan
            np.save(data / f"{name}.npy", c)
            cubes.append(data / f"{name}.npy")
        lab = (rng.random((h, w)) < 0.4).astype(np.uint8)
        lab[0, 0], lab[-1, -1] = 0, 1
        kind = spec["labels"]
        if kind == "only1":
            lab[:] = 1
        elif kind == "values":
            lab[0, 0] = 7
        if kind in ("png", "png255", "jpg"):
            labels = data / f"labels.{kind[:3]}"
            Image.fromarray(lab if kind == "png" else lab * 255).save(labels)
        else:
            labels = data / "labels.npy"
            arr = lab.astype(np.float32) if kind == "nanfloat" else lab
            if kind == "nanfloat":
                arr[0, 1] = np.nan
            np.save(labels, arr)
        out = root / "out"
        rc, err = _check(["change", *cubes, "--labels", labels, "--out", out, "--config", "change-tiny",
                          "--quiet", "--set", "train.steps=2"], data, out)
        if rc == 0:
            pred = np.load(out / "prediction.npy")
            assert pred.shape == (h, w) and set(np.unique(pred)) <= {0, 1}
            assert (out / "prediction.png").is_file() and (out / "config.yaml").is_file()
