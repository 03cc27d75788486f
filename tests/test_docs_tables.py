"""Every figure table of README.md and docs/*.md is what docs/render_tables.py renders from the
records in docs/results/: the text cannot drift from the measurements."""

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("render_tables", ROOT / "docs" / "render_tables.py")
render_tables = importlib.util.module_from_spec(spec)
spec.loader.exec_module(render_tables)


@pytest.mark.parametrize("document", render_tables.DOCUMENTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_rendered_blocks_match_their_records(document):
    _, changed = render_tables.render(document.read_text(), str(document.relative_to(ROOT)))
    assert changed == [], "run `python docs/render_tables.py` after updating a record"


def test_the_check_catches_a_planted_edit():
    text = (ROOT / "README.md").read_text()
    start = text.index("<!-- table: main_job ")
    row = text.index("\n| `", start) + 1
    planted = text[:row] + text[row:].replace("0.", "0.9", 1)
    _, changed = render_tables.render(planted, "README.md")
    assert changed and "main_job" in changed[0]
    assert render_tables.main(["--check"]) == 0


def test_every_document_renders_at_least_the_tables_it_marks():
    blocks = sum(len(render_tables.BLOCK.findall(d.read_text())) for d in render_tables.DOCUMENTS)
    assert blocks >= 5
