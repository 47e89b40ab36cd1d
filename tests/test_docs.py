"""The documentation holds together: links resolve, Python blocks compile (marked ones run), tables are generated.

* Every relative link and image of README.md and docs/*.md points to a file of
  the repository, and every ``#anchor`` to a heading of its page (GitHub's
  anchor rules: lower case, punctuation dropped, spaces to hyphens, ``-1``,
  ``-2`` for repeats).
* Every fenced ``python`` block of docs/*.md compiles; a block whose first line
  is ``# doctest: run`` also runs (keep those quick).
* A table between ``<!-- results_table.py NAME -->`` and ``<!-- end -->`` is
  exactly what ``python benchmarks/results_table.py NAME`` prints from
  ``docs/results/``, so no measured number is retyped by hand.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import re
from pathlib import Path

import pyro
import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
RUN_MARKER = "# doctest: run"

_FENCE = re.compile(r"^(```+|~~~+)\s*([\w+-]*)")
_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_SRC = re.compile(r"<img[^>]*\ssrc=\"([^\"]+)\"")
_MARKED = re.compile(r"^<!-- results_table\.py (\w+) -->\n(.*?)^<!-- end -->$", re.S | re.M)
_OPEN = re.compile(r"^<!-- results_table\.py ", re.M)


def _blocks(text: str) -> tuple[list[str], list[tuple[str, int, str]]]:
    """Splits a page into its prose lines (code blocks blanked) and its fenced blocks (lang, line, source)."""
    prose, blocks = [], []
    fence, lang, start, body = None, "", 0, []
    for i, line in enumerate(text.splitlines(), 1):
        m = _FENCE.match(line.strip())
        if fence is None and m:
            fence, lang, start, body = m.group(1), m.group(2).lower(), i, []
            prose.append("")
        elif fence is not None and line.strip().startswith(fence) and line.strip() == line.strip()[0] * len(line.strip()):
            blocks.append((lang, start, "\n".join(body) + "\n"))
            fence = None
            prose.append("")
        elif fence is not None:
            body.append(line)
            prose.append("")
        else:
            prose.append(line)
    assert fence is None, f"unclosed code fence opened on line {start}"
    return prose, blocks


def _slug(heading: str) -> str:
    """GitHub's anchor of a heading's text."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # links: their text
    text = re.sub(r"<[^>]+>", "", text).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    prose, _ = _blocks(path.read_text(encoding="utf-8"))
    seen: dict[str, int] = {}
    out = set()
    for line in prose:
        m = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not m:
            continue
        slug = _slug(m.group(1))
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    out.update(re.findall(r"<a\s+(?:name|id)=\"([^\"]+)\"", path.read_text(encoding="utf-8")))
    return out


def _links(path: Path) -> list[tuple[int, str]]:
    prose, _ = _blocks(path.read_text(encoding="utf-8"))
    out = []
    for i, line in enumerate(prose, 1):
        line = re.sub(r"`[^`]*`", "", line)  # inline code is not a link
        out += [(i, t) for t in _LINK.findall(line) + _SRC.findall(line)]
    return [(i, t) for i, t in out if not re.match(r"^[a-z][a-z0-9+.-]*:", t)]  # http:, mailto:, ...


def _id(path: Path) -> str:
    return str(path.relative_to(ROOT))


def test_pages_exist():
    names = {p.name for p in PAGES}
    for page in ("model.md", "priors.md", "data.md", "cli.md", "performance.md", "results.md", "diagnostics.md"):
        assert page in names, f"docs/{page} is missing"


def test_slug_follows_github():
    assert _slug("The objective, its scaling, and β") == "the-objective-its-scaling-and-β"
    assert _slug("Solar irradiance data (`hvi/data/solar.nc`)") == "solar-irradiance-data-hvidatasolarnc"
    assert _slug("q(θ): point estimate, Normal or flow") == "qθ-point-estimate-normal-or-flow"
    assert _slug("`update=\"natural\"` (the default): the Bayesian learning rule") == (
        "updatenatural-the-default-the-bayesian-learning-rule")


@pytest.mark.parametrize("page", PAGES, ids=_id)
def test_relative_links_resolve(page: Path):
    bad = []
    for line, target in _links(page):
        file, _, anchor = target.partition("#")
        dest = (page.parent / file).resolve() if file else page
        if not dest.exists():
            bad.append(f"line {line}: {target} (no file {dest.relative_to(ROOT) if dest.is_relative_to(ROOT) else dest})")
        elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
            bad.append(f"line {line}: {target} (no heading with anchor #{anchor} in {_id(dest)})")
    assert not bad, f"{_id(page)} has broken links:\n" + "\n".join(bad)


@pytest.mark.parametrize("page", [p for p in PAGES if p.parent.name == "docs"], ids=_id)
def test_python_blocks(page: Path, tmp_path, monkeypatch):
    _, blocks = _blocks(page.read_text(encoding="utf-8"))
    monkeypatch.chdir(tmp_path)
    for lang, line, src in blocks:
        if lang not in ("python", "py"):
            continue
        name = f"{_id(page)}:{line}"
        code = compile(src, name, "exec")  # a SyntaxError names the page and line
        if src.lstrip().startswith(RUN_MARKER):
            pyro.clear_param_store()
            with contextlib.redirect_stdout(io.StringIO()):
                exec(code, {"__name__": f"docs_block_{line}"})


def _results_table():
    spec = importlib.util.spec_from_file_location("results_table", ROOT / "benchmarks" / "results_table.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("page", PAGES, ids=_id)
def test_generated_tables_match_their_results(page: Path):
    text = page.read_text(encoding="utf-8")
    tables = _MARKED.findall(text)
    assert len(tables) == len(_OPEN.findall(text)), f"{_id(page)}: a results_table marker has no '<!-- end -->'"
    module = _results_table()
    for name, text in tables:
        expected = getattr(module, name)().strip()
        assert text.strip() == expected, (
            f"{_id(page)}: the table marked 'results_table.py {name}' differs from what "
            f"'python benchmarks/results_table.py {name}' prints; paste its output between the markers"
        )


def test_run_marker_is_used():
    """At least one docs block runs, so the runner itself is exercised."""
    runs = [src for p in PAGES if p.parent.name == "docs" for lang, _, src in _blocks(p.read_text(encoding="utf-8"))[1]
            if lang == "python" and src.lstrip().startswith(RUN_MARKER)]
    assert runs, f"no python block in docs/ starts with {RUN_MARKER!r}"



def test_checker_finds_broken_links(tmp_path):
    """The checker itself: a missing file and a missing anchor are found, code is not a link."""
    page = tmp_path / "page.md"
    page.write_text(
        "# Top\n\n## The objective, its scaling, and β\n\n## Top\n\n"
        "[ok](#the-objective-its-scaling-and-β) [ok](#top-1) [bad](#nowhere) [file](missing.md)\n"
        "`[not](a-link.md)`\n\n```python\n# [no](link.md)\n```\n"
    )
    assert _anchors(page) == {"top", "the-objective-its-scaling-and-β", "top-1"}
    assert [t for _, t in _links(page)] == ["#the-objective-its-scaling-and-β", "#top-1", "#nowhere", "missing.md"]


def test_every_benchmark_script_is_in_the_benchmarks_index():
    readme = (ROOT / "benchmarks" / "README.md").read_text()
    index = readme.split("## Every script", 1)[1].split("\n## ", 1)[0]
    listed = set(re.findall(r"^\| `([\w.]+\.py)` \|", index, flags=re.M))
    scripts = {p.name for p in (ROOT / "benchmarks").glob("*.py")}
    assert scripts - listed == set(), "add these to benchmarks/README.md's 'Every script' tables"
    assert listed - scripts == set(), "these are listed in benchmarks/README.md but do not exist"
