"""docs/phantom.md stays true to the code: the tissue table and every configuration field."""

from __future__ import annotations

from pathlib import Path

from sarcart.phantom.config import CohortSpec
from sarcart.phantom.tissues import tissue_table_markdown

DOC = Path(__file__).resolve().parents[2] / "docs" / "phantom.md"


def test_tissue_table_in_the_docs_is_the_code_table() -> None:
    assert tissue_table_markdown() in DOC.read_text()


def test_every_spec_field_is_documented() -> None:
    text = DOC.read_text()
    missing = [f for f in CohortSpec.model_fields if f"`{f}`" not in text]
    assert not missing
