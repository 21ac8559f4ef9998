"""Documentation generated from code stays in step with it."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from ddpinn.config_reference import _sections, field_docs, reference_markdown

ROOT = Path(__file__).resolve().parents[1]


def test_every_config_field_is_documented():
    for name, cls, _ in _sections():
        docs = field_docs(cls)
        missing = [f.name for f in dataclasses.fields(cls) if not docs.get(f.name)]
        assert not missing, f"{name}: fields without a docstring: {missing}"


def test_configuration_page_is_current():
    page = (ROOT / "docs" / "configuration.md").read_text()
    assert page.strip() == reference_markdown().strip(), "regenerate: ddpinn config --markdown > docs/configuration.md"
