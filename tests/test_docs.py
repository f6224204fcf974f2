"""The documentation's relative links point at files (and headings) that exist in the repository."""

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

def _report():
    """``benchmarks/report.py``, the docs generator (skips where the repository's benchmarks/
    folder is not next to the tests, e.g. an installed package)."""
    import importlib.util

    path = ROOT / "benchmarks" / "report.py"
    if not path.exists():
        pytest.skip("no benchmarks/report.py next to the tests")
    spec = importlib.util.spec_from_file_location("fhcnn_docs_report", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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
