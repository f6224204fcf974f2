"""The documentation states what is: relative links resolve, generated tables match the results,
command lines parse, config keys, shipped configs, Python names and tests exist, and the option
tables give the code's defaults."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

_LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
_FENCE = re.compile(r"^```.*?^```", re.S | re.M)


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    s = re.sub(r"[`*_]", "", heading.strip().lower())
    s = re.sub(r"[^\w\- ]", "", s)
    return s.replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    text = _FENCE.sub("", page.read_text())
    return {_slug(m.group(1)) for m in re.finditer(r"^#+\s+(.*)$", text, re.M)}


def _links(page: Path) -> list[str]:
    return _LINK.findall(_FENCE.sub("", page.read_text()))


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page):
    if not page.exists():
        pytest.skip("no README/docs next to the tests")
    bad = []
    for link in _links(page):
        if re.match(r"^[a-z]+:", link) or link.startswith("//"):
            continue  # http:, https:, mailto:
        path, _, anchor = link.partition("#")
        target = (page.parent / path).resolve() if path else page
        if not target.exists():
            bad.append(f"{link}: no such file")
        elif ROOT not in target.parents and target != ROOT:
            bad.append(f"{link}: outside the repository")
        elif anchor and target.suffix == ".md" and anchor not in _anchors(target):
            bad.append(f"{link}: no heading #{anchor} in {target.name}")
    assert not bad, f"{page.relative_to(ROOT)}: " + "; ".join(bad)


def test_readme_is_short_and_keeps_the_ci_command():
    text = (ROOT / "README.md").read_text()
    assert len(text.encode()) <= 12 * 1024
    assert "python3 dev.py test" in text


# --- the generated tables: benchmarks/report.py --------------------------------------------

def _benchmark(name: str):
    """``benchmarks/<name>.py`` as a module (skips where the repository's benchmarks/ folder is
    not next to the tests, e.g. an installed package)."""
    import importlib.util

    path = ROOT / "benchmarks" / f"{name}.py"
    if not path.exists():
        pytest.skip(f"no benchmarks/{name}.py next to the tests")
    spec = importlib.util.spec_from_file_location(f"fhcnn_benchmark_{name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _report():
    """``benchmarks/report.py``, the docs generator."""
    return _benchmark("report")


def test_replace_tables_markers():
    replace_tables = _report().replace_tables
    text = ("intro\n<!-- table:a -->\nold a\n<!-- /table:a -->\nmiddle\n"
            "<!-- table:b -->\n<!-- /table:b -->\nend\n")
    out = replace_tables(text, lambda name: f"| {name} |\n")
    assert out == ("intro\n<!-- table:a -->\n| a |\n<!-- /table:a -->\nmiddle\n"
                   "<!-- table:b -->\n| b |\n<!-- /table:b -->\nend\n")
    assert replace_tables(out, lambda name: f"| {name} |") == out  # idempotent
    assert replace_tables("no markers\n", lambda name: "x") == "no markers\n"
    for bad in ("<!-- table:a -->\nx\n",                                    # never closed
                "<!-- /table:a -->\n",                                      # closes nothing
                "<!-- table:a -->\n<!-- /table:b -->\n",                    # mismatched
                "<!-- table:a -->\n<!-- table:b -->\n<!-- /table:b -->\n<!-- /table:a -->\n"):
        with pytest.raises(ValueError):
            replace_tables(bad, lambda name: "x")


def test_report_unknown_table_and_missing_results(tmp_path):
    report = _report()
    with pytest.raises(ValueError, match="unknown table"):
        report.render("nope", tmp_path)
    doc = tmp_path / "page.md"
    doc.write_text("<!-- table:vae_digits -->\n<!-- /table:vae_digits -->\n")
    before = doc.read_bytes()
    with pytest.raises(ValueError, match="vae_digits.json is missing"):
        report.update_docs(tmp_path, [doc])
    assert doc.read_bytes() == before
    assert report.main([str(tmp_path), "--docs", str(doc)]) == 2


def test_report_names_a_missing_page_or_results_folder(tmp_path, capsys):
    """``--docs`` naming a page that does not exist ended in a FileNotFoundError traceback, and
    a results folder that does not exist printed nothing with exit code 0 (no table, no word
    why). Each is one ``error:`` line naming the path, exit code 2, and no page is written."""
    report = _report()
    page = tmp_path / "page.md"
    page.write_text("<!-- table:vae_digits -->\nmine\n<!-- /table:vae_digits -->\n")
    before = page.read_bytes()
    results = ROOT / "benchmarks" / "results"
    for argv, named in (([str(results), "--docs", str(tmp_path / "nope.md")], "nope.md"),
                        ([str(tmp_path / "none")], "none"),
                        ([str(tmp_path / "none"), "--docs", str(page)], "none")):
        assert report.main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and str(tmp_path / named) in err[0]
    assert page.read_bytes() == before


def test_report_writes_no_page_when_one_fails(tmp_path):
    """``--docs`` wrote each page as soon as it was rendered: a later page that failed (a table
    whose results are missing) left the earlier ones regenerated and the rest not, docs from
    two sets of results. Every page is rendered first; a failure writes none."""
    report = _report()
    results = ROOT / "benchmarks" / "results"
    if not (results / "drift.json").exists():
        pytest.skip("no benchmarks/results next to the tests")
    a, b = tmp_path / "a.md", tmp_path / "b.md"
    a.write_text("<!-- table:drift -->\nstale\n<!-- /table:drift -->\n")
    b.write_text("<!-- table:drift -->\n<!-- /table:drift -->\n<!-- table:nope -->\n<!-- /table:nope -->\n")
    before = {p: p.read_bytes() for p in (a, b)}
    with pytest.raises(ValueError, match="b.md: unknown table 'nope'"):
        report.update_docs(results, [tmp_path])
    assert {p: p.read_bytes() for p in (a, b)} == before
    assert report.update_docs(results, [a]) == [a] and "stale" not in a.read_text()


def test_docs_tables_match_results():
    """Every generated table in README.md and docs/*.md equals what benchmarks/report.py makes
    from benchmarks/results/ (regenerate: python benchmarks/report.py --docs README.md docs)."""
    report = _report()
    results = ROOT / "benchmarks" / "results"
    if not results.is_dir():
        pytest.skip("no benchmarks/results next to the tests")
    stale = report.update_docs(results, [ROOT / "README.md", ROOT / "docs"], check=True)
    assert not stale, (f"out of date: {[str(p.relative_to(ROOT)) for p in stale]}; run "
                       "python benchmarks/report.py --docs README.md docs")
    used = {m.group(1) for page in PAGES for m in re.finditer(r"<!-- table:([\w-]+) -->", page.read_text())}
    assert used == set(report.TABLES), "every table the generator knows appears in the docs, and only those"


def test_vae_docs_say_the_prior_vs_prior_energy_distance_can_be_negative():
    """energy_distance_prior_vs_prior (metrics.json, normality.json) is an unbiased estimate of
    0: about half of the draws are negative, which read as a bug where the docs did not say so."""
    import torch

    from fhcnn.models.autoencoder import energy_distance

    g = torch.Generator().manual_seed(0)
    draws = [float(energy_distance(torch.randn(20, 8, generator=g, dtype=torch.float64),
                                   torch.randn(20, 8, generator=g, dtype=torch.float64))) for _ in range(200)]
    assert 60 < sum(d < 0 for d in draws) < 140
    text = " ".join((ROOT / "docs" / "vae.md").read_text().split())
    bullet = text[text.index("`energy_distance_prior_vs_prior` (both files)") - 300:][:700]
    assert "may be **negative**" in bullet and "as often negative as positive" in bullet


# --- command lines, config keys, names and defaults the pages state ----------------------------

_BLOCK = re.compile(r"^```\w*\n(.*?)^```", re.S | re.M)


def _command_lines() -> list[tuple[str, list[str]]]:
    """``(page, argv)`` of every ``fhcnn <command> ...`` line in the pages' code blocks (also after
    ``-m fhcnn``), continuation lines joined, comments dropped; in a usage line ``[--opt X]`` is
    ``--opt X``, ``IMAGE ...`` one ``IMAGE`` and ``a|b|FILE`` the first choice ``a``."""
    import shlex

    out = []
    for page in PAGES:
        for block in _BLOCK.findall(page.read_text()):
            for line in re.sub(r"\\\n\s*", " ", block).splitlines():
                m = re.match(r"^\s*(?:.*-m fhcnn|fhcnn)\s+(.*)$", line)
                if not m:
                    continue
                text = re.sub(r"\s#.*$", "", m.group(1)).replace("...", "")
                text = re.sub(r"\[(-[^\]]*)\]", r"\1", text)
                argv = [tok.split("|")[0] if "|" in tok else tok for tok in shlex.split(text)]
                out.append((page.name, argv))
    return out


def _app_configs() -> dict[str, type]:
    from fhcnn.apps.change import ChangeConfig
    from fhcnn.apps.segment import SegmentConfig
    from fhcnn.apps.vae import VAEConfig
    from fhcnn.apps.volume import VolumeConfig

    return {"segment": SegmentConfig, "demo": SegmentConfig, "change": ChangeConfig,
            "volume": VolumeConfig, "train": VAEConfig}


def test_docs_command_lines_parse_and_their_configs_load():
    """Every ``fhcnn ...`` command line of the pages parses with the current command line, and
    its ``--config`` and ``--set`` make a valid config of that command."""
    from fhcnn.cli import build_parser
    from fhcnn.cli._options import config_from_args

    lines = _command_lines()
    assert len(lines) >= 25  # the extraction finds the pages' commands
    configs, bad = _app_configs(), []
    for page, argv in lines:
        parser, _ = build_parser()
        try:
            args = parser.parse_args(argv)
        except SystemExit:
            bad.append(f"{page}: fhcnn {' '.join(argv)}: does not parse")
            continue
        cls = configs.get(getattr(args, "vae_command", None) or args.command)
        if cls is not None:
            try:
                config_from_args(cls, args)  # as the command builds it
            except ValueError as e:
                bad.append(f"{page}: fhcnn {' '.join(argv)}: {e}")
    assert not bad, "\n".join(bad)


def _config_keys() -> set[str]:
    """Every key path (sections and leaves) of the applications' configs: ``train.lr``, ``model``."""
    import dataclasses

    from fhcnn.config import field_types

    def walk(cls: type, prefix: str):
        for f in dataclasses.fields(cls):
            yield prefix + f.name
            tp = field_types(cls)[f.name]
            if dataclasses.is_dataclass(tp):
                yield from walk(tp, prefix + f.name + ".")
    return {k for cls in _app_configs().values() for k in walk(cls, "")}


def test_docs_config_keys_and_names_exist():
    """Every ``--set KEY=...`` and every ``section.key`` the pages name (``data.window_depth``) is a
    key of an application's config, and every ``--config NAME`` a shipped config."""
    from fhcnn.config import available_configs

    keys, names, bad = _config_keys(), set(available_configs()), []
    sections = sorted({k.split(".")[0] for k in keys if "." in k})
    dotted = re.compile(rf"(?<![\w./'-])((?:{'|'.join(sections)})\.[a-z_]+(?:\.[a-z_]+)?)\b(?![.(/\-])")
    for page in PAGES:
        text = page.read_text()
        for m in re.finditer(r"--set\s+\"?([a-z_.]+)=", text):
            if m.group(1) not in keys:
                bad.append(f"{page.name}: --set {m.group(1)}")
        for m in dotted.finditer(text):
            key = m.group(1)
            if key not in keys and not re.fullmatch(r"\w+\.(md|py|json|png|yaml|npy|safetensors|bmp)", key):
                bad.append(f"{page.name}: {key}")
        for m in re.finditer(r"--config\s+([\w-]+)(?=[\s|`)])", text):
            if m.group(1) not in names and m.group(1) not in ("NAME", "FILE"):
                bad.append(f"{page.name}: --config {m.group(1)}")
    assert not bad, "not a config key or shipped config: " + "; ".join(sorted(set(bad)))


def test_docs_python_names_and_test_paths_resolve():
    """Every ``fhcnn.module.Name`` the pages mention imports (an attribute a class sets in its
    ``__init__`` counts), and every ``tests/...py[::test]`` exists."""
    import importlib
    import inspect

    bad = []
    for page in PAGES:
        text = page.read_text()
        for name in sorted(set(re.findall(r"`(fhcnn(?:\.[A-Za-z_]\w*)+)[`(]", text))):
            parts, obj, i = name.split("."), None, 0
            for i in range(len(parts), 0, -1):
                try:
                    obj = importlib.import_module(".".join(parts[:i]))
                    break
                except ModuleNotFoundError:
                    continue
            for j, attr in enumerate(parts[i:]):
                if hasattr(obj, attr):
                    obj = getattr(obj, attr)
                elif inspect.isclass(obj) and j == len(parts) - i - 1 and \
                        re.search(rf"self\.{attr}\s*[:=]", inspect.getsource(obj)):
                    break
                else:
                    bad.append(f"{page.name}: {name}")
                    break
        for path, test in re.findall(r"(tests/[\w/]+\.py)(?:::(\w+))?", text):
            if not (ROOT / path).is_file():
                bad.append(f"{page.name}: {path}")
            elif test and not re.search(rf"def {test}\b", (ROOT / path).read_text()):
                bad.append(f"{page.name}: {path}::{test}")
    assert not bad, "no such name or test: " + "; ".join(bad)


def _doc_value(cell: str, value: object) -> bool:
    """Whether a table cell (``1``, ``0.5``, ``true``, `` `cosine` ``, ``null``, ``[]``) states ``value``."""
    import yaml

    text = cell.strip().strip("`").replace("−", "-")
    if isinstance(value, bool) or value is None:
        return text == {True: "true", False: "false", None: "null"}[value]
    if isinstance(value, (int, float)):
        try:
            return float(text) == float(value)
        except ValueError:
            return False
    if isinstance(value, str):
        return text == value or (value == "" and text == '""')
    return yaml.safe_load(text) == yaml.safe_load(yaml.safe_dump(value))


def test_docs_key_tables_state_the_code_defaults():
    """The option tables (``| key | default | ... |``) of training.md, segmentation.md,
    volume.md and vae.md give every key's default as the dataclasses have it, and the values of
    the shipped config a column names (`` `video` config``) as that config has them."""
    import dataclasses
    from dataclasses import dataclass, field

    from fhcnn.config import load_config
    from fhcnn.training import TrainConfig

    @dataclass
    class _Train:
        train: TrainConfig = field(default_factory=TrainConfig)

    apps = _app_configs()
    pages = {"training.md": _Train, "segmentation.md": apps["segment"], "volume.md": apps["volume"],
             "vae.md": apps["train"]}
    checked, bad = 0, []
    for name, cls in pages.items():
        text = _FENCE.sub("", (ROOT / "docs" / name).read_text())
        for m in re.finditer(r"((?:^(?!\|).*\n)*)^\| key \| (.*) \|\n\|[-|]+\|\n((?:^\|.*\n)+)", text, re.M):
            before, header, rows = m.group(1), m.group(2).split(" | "), m.group(3)
            marker = re.findall(r"`(?:--set )?(\w+)(?:\.\*|\.KEY|:)", before)
            section = marker[-1] + "." if marker else ""
            columns = [(i, cls()) for i, h in enumerate(header) if h.startswith("default")]
            columns += [(i, load_config(cls, n)) for i, h in enumerate(header)
                        for n in re.findall(r"`([\w-]+)` config", h)]
            for row in rows.splitlines():
                cells = row.strip("|").split(" | ")
                keys = [section + k if "." not in k else k for k in re.findall(r"`([\w.]+)`", cells[0])]
                for i, cfg in columns:
                    values = [cells[i + 1]] if len(keys) == 1 else cells[i + 1].split(", ")
                    values = values * len(keys) if len(values) == 1 else values
                    for key, cell in zip(keys, values, strict=True):
                        value = cfg
                        for part in key.split("."):
                            value = getattr(value, part)
                        if dataclasses.is_dataclass(value) or not _doc_value(cell, value):
                            bad.append(f"{name}: {key} = {value!r}, the table says {cell.strip()}")
                        checked += 1
    assert checked >= 100, checked
    assert not bad, "\n".join(bad)


# --- the library's examples ---------------------------------------------------------------

_PYTHON_BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)
_SHAPE_COMMENT = re.compile(r"^(\w+) = .*#\s*\((\d+(?:,\s*\d+)*)\)\s*$")


@pytest.mark.parametrize("name", ["README.md", "docs/library.md", "docs/core.md"])
def test_library_pages_python_blocks_run_and_give_the_shapes_they_state(name):
    """The ``python`` blocks of the pages that present the library run as written (a page's
    blocks in order, in one namespace, as a reader pastes them), and every ``y = ...  # (1, 24,
    8, 32, 32)`` comment gives the shape ``y`` gets there."""
    import ast

    import torch

    page = ROOT / name
    if not page.exists():
        pytest.skip("no README/docs next to the tests")
    torch.manual_seed(0)
    namespace: dict = {}
    checked = 0
    for block in _PYTHON_BLOCK.findall(page.read_text()):
        lines = block.splitlines()
        for stmt in ast.parse(block).body:
            exec(compile(ast.Module([stmt], []), name, "exec"), namespace)
            m = _SHAPE_COMMENT.match(lines[stmt.lineno - 1])
            if m:
                want = tuple(int(s) for s in m.group(2).split(","))
                assert tuple(namespace[m.group(1)].shape) == want, f"{name}: {lines[stmt.lineno - 1]}"
                checked += 1
    assert name != "docs/library.md" or checked >= 1


def test_library_docstring_examples_run():
    """Every ``>>>`` example in the library's modules (wavelets, layers, network, reversible,
    memory, models, spatial) runs and prints what it shows."""
    import doctest
    import importlib
    import pkgutil

    import fhcnn

    names = ["wavelets", "layers", "network", "reversible", "memory", "options"]
    for sub in ("models", "spatial"):
        package = importlib.import_module(f"fhcnn.{sub}")
        names += [f"{sub}.{m.name}" for m in pkgutil.iter_modules(package.__path__)]
    tried, failed = 0, []
    for mod in names:
        result = doctest.testmod(importlib.import_module(f"fhcnn.{mod}"), report=False,
                                 optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
        tried += result.attempted
        if result.failed:
            failed.append(f"fhcnn.{mod}: {result.failed} of {result.attempted}")
    assert fhcnn.HyperbolicNetwork.__doc__ and tried >= 20, tried
    assert not failed, "doctest failures (python -m doctest -v): " + "; ".join(failed)


def test_the_volume_report_takes_a_unet_only_from_runs_with_the_same_flips():
    """A fhcnn-only run of the sparse-slice benchmark takes the U-Net of another run of the same
    labels and settings only if both kept the same axis upright (recorded, or read from the
    ``flips`` line of runs that recorded it there; neither: every axis flipped)."""
    bench = _benchmark("volume_sparse")
    assert bench._upright({"upright": "D", "flips": "no axis kept upright (x)"}) == "D"
    assert bench._upright({"upright": None, "flips": "kept upright along W (y)"}) is None
    assert bench._upright({"flips": "kept upright along W (the labels are layers along it: ...); ..."}) == "W"
    assert bench._upright({"flips": "vertical axis D (stated by the input); training windows ..."}) == "D"
    assert bench._upright({"flips": "no axis kept upright (the labels are layers along none of D)"}) is None
    assert bench._upright({}) is None
