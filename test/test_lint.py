"""The linters ROS users expect, run by the test command.

ruff is configured in ruff.toml to ament_flake8's and ament_pep257's rules (99 columns,
pycodestyle + pyflakes, pep257 docstrings); `ruff format` is the project's formatter.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# Every folder of Python the project keeps; a folder that does not exist (yet) is left out.
LINTED = ["src", "test", "bench", "research", "tools"]


def ruff(*args: str) -> subprocess.CompletedProcess:
    """Run ruff with the repository's ruff.toml over the project's Python folders."""
    folders = [name for name in LINTED if (ROOT / name).is_dir()]
    return subprocess.run(
        [sys.executable, "-m", "ruff", *args, *folders],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize(
    "command",
    [
        ("check", "--no-fix", "--output-format", "concise"),
        ("format", "--check"),
    ],
    ids=["ruff-check", "ruff-format"],
)
def test_no_findings(command: tuple[str, ...]) -> None:
    out = ruff(*command)
    if "No module named ruff" in out.stderr:
        pytest.fail("ruff is not installed: run tools/setup_env.py (requirements/python.txt)")
    if out.returncode != 0:
        # pytest.fail, not assert: pytest shortens long assertion messages; show every finding.
        pytest.fail(
            f"`ruff {' '.join(command)}` found problems (fix them by hand, or run `ruff format` "
            f"and `ruff check --fix`):\n{out.stdout}{out.stderr}",
            pytrace=False,
        )
