"""docs/interfaces.md lists every topic and service name of nsl_common.names."""

from __future__ import annotations

from pathlib import Path

from nsl_common import names

DOC = Path(__file__).resolve().parent.parent / "docs" / "interfaces.md"


def test_every_topic_and_service_name_is_documented():
    text = DOC.read_text(encoding="utf-8")
    graph_names = {
        constant: value
        for constant, value in vars(names).items()
        if constant.endswith(("_TOPIC", "_SERVICE")) or constant == "DIAGNOSTICS"
    }
    missing = {c: v for c, v in graph_names.items() if f"`{v}`" not in text}
    assert not missing, f"docs/interfaces.md does not list {missing}"
