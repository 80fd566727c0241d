"""The repository stands alone: its README, docs, configs and code never send a reader to documents outside it."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUTSIDE = re.compile(r"SPEC §|SPEC's|\bSPEC\.md|ENVIRONMENT\.md|TRANSFORMERS5\.md|ANCHORS\.md|STYLE\.md|shared/docs")


def test_nothing_cites_documents_outside_the_repository():
    files = [ROOT / "README.md", *ROOT.glob("docs/**/*"), *ROOT.glob("configs/**/*.yaml"), *ROOT.glob("llmkit/**/*.py"),
             *ROOT.glob("scripts/**/*"), *ROOT.glob("examples/**/*.md"), *ROOT.glob("tests/**/*.py")]
    found = [f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
             for path in files if path.is_file() and path != Path(__file__).resolve()
             for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1) if OUTSIDE.search(line)]
    assert not found, "\n".join(found)


# ---------------------------------------------------------------- the pages: config reference, links, README size

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
LINK = re.compile(r"(?<![\\!])\[[^\]\n]*\]\(([^()\s]+)(?:\s+\"[^\"]*\")?\)")
FENCE = re.compile(r"^\s*(```|~~~)")


def _prose(path: Path) -> list[str]:
    """The lines of a markdown file outside fenced code blocks, inline code removed (links there are not links)."""
    lines, fenced = [], False
    for line in path.read_text().splitlines():
        if FENCE.match(line):
            fenced = not fenced
            continue
        lines.append("" if fenced else re.sub(r"`[^`\n]*`", "", line))
    return lines


def github_anchor(heading: str) -> str:
    """GitHub's anchor for a heading: markup dropped, lowercase, punctuation other than - and _ dropped, spaces
    to -."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip()).lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every heading anchor of a markdown file (a repeated heading gets -1, -2, ... as on GitHub)."""
    found: set[str] = set()
    counts: dict[str, int] = {}
    fenced = False
    for line in path.read_text().splitlines():
        if FENCE.match(line):
            fenced = not fenced
            continue
        heading = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if fenced or not heading:
            continue
        base = github_anchor(heading.group(1))
        n = counts.get(base, 0)
        counts[base] = n + 1
        found.add(base if n == 0 else f"{base}-{n}")
    return found


def _load_config_docs_script():
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_config_docs", ROOT / "scripts" / "make_config_docs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_config_reference_is_current():
    script = _load_config_docs_script()
    page = ROOT / "docs" / "config.md"
    expected = script.render()
    assert expected == script.render(), "scripts/make_config_docs.py writes a different page on each run"
    assert page.is_file() and page.read_text() == expected, (
        "docs/config.md is stale (a config class's keys or help texts changed): run "
        "python scripts/make_config_docs.py")


def test_relative_links_point_to_existing_files_and_headings():
    broken = []
    for page in PAGES:
        for number, line in enumerate(_prose(page), 1):
            for target in LINK.findall(line):
                if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto:: not this repository's files
                    continue
                file_part, _, anchor = target.partition("#")
                resolved = (page.parent / file_part).resolve() if file_part else page
                where = f"{page.relative_to(ROOT)}:{number}: {target}"
                if not resolved.exists():
                    broken.append(f"{where} (no such file)")
                elif not resolved.is_relative_to(ROOT):
                    broken.append(f"{where} (outside the repository)")
                elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
                    broken.append(f"{where} (no heading with that anchor in {resolved.relative_to(ROOT)})")
    assert not broken, "\n".join(broken)


def test_readme_is_short_and_links_to_every_page():
    readme = ROOT / "README.md"
    lines = readme.read_text().splitlines()
    assert len(lines) <= 300, f"README.md has {len(lines)} lines; move detail to a page under docs/ (at most 300)"
    linked = {(ROOT / target.partition("#")[0]).resolve() for line in _prose(readme) for target in LINK.findall(line)
              if not re.match(r"[a-z][a-z0-9+.-]*:", target) and target.partition("#")[0]}
    missing = [str(page.relative_to(ROOT)) for page in PAGES[1:] if page.resolve() not in linked]
    assert not missing, f"README.md does not link to: {', '.join(missing)}"


def test_github_anchor_rule():
    assert github_anchor("SST-2 with MiniLM-L6 (measured)") == "sst-2-with-minilm-l6-measured"
    assert github_anchor("Instruction tuning (`task.type: causal-lm`)") == "instruction-tuning-tasktype-causal-lm"
    assert github_anchor("What llmkit may delete or write") == "what-llmkit-may-delete-or-write"
    assert github_anchor("`data`") == "data" and github_anchor("snake_case kept") == "snake_case-kept"


TEST_REFERENCE = re.compile(r"(tests/[\w/]+\.py)::(\w+)")


def test_every_test_named_in_claims_exists():
    """docs/claims.md holds each claim by `tests/FILE.py::test_name`: the file exists and defines that test."""
    text = (ROOT / "docs" / "claims.md").read_text()
    references = TEST_REFERENCE.findall(text)
    assert len(references) > 100, "docs/claims.md should name the tests that hold its claims"
    missing = []
    for path, name in sorted(set(references)):
        source = ROOT / path
        if not source.is_file():
            missing.append(f"{path} (no such file)")
        elif not re.search(rf"^def {name}\(", source.read_text(), re.MULTILINE):
            missing.append(f"{path}::{name} (no such test)")
    assert not missing, "\n".join(missing)
    rows = [line for line in text.splitlines() if line.startswith("|")]
    bare = [ref for row in rows for ref in re.findall(r"tests/[\w/]+\.py(?!::)", row)]
    assert not bare, f"name the test, not only the file: {bare}"
