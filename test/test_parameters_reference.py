"""Every node's parameters are declared with descriptions and appear in docs/parameters.md."""

from __future__ import annotations

from pathlib import Path

import pytest
from nsl_bringup.paramdoc import collect_parameter_docs, render_markdown

pytestmark = pytest.mark.system

REFERENCE = Path(__file__).resolve().parent.parent / "docs" / "parameters.md"


def test_parameters_are_described_and_the_reference_is_current(rclpy_context):
    docs = collect_parameter_docs()
    assert {d.node for d in docs} == {"sim", "policy", "collector", "trainer", "arm"}
    undocumented = [f"{d.node}.{d.name}" for d in docs if len(d.description.strip()) < 10]
    assert not undocumented, f"parameters without a description: {undocumented}"
    assert REFERENCE.read_text().strip() == render_markdown(docs).strip(), (
        "docs/parameters.md is out of date: run `./nsl docs parameters`"
    )
