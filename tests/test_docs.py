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
