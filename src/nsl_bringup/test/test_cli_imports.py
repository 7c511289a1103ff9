"""The ``nsl`` command's parser and help import no torch, so that every command starts fast."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HELP_COMMANDS = [
    ["--help"],
    ["experiment", "run", "--help"],
    ["experiment", "report", "--help"],
    ["train", "finetune", "--help"],
]
"""Help screens that read the package commands' configs (ExperimentConfig, FineTuneRecipe)."""


def torch_modules_after(code: str) -> list[str]:
    """Run ``code`` in a fresh interpreter; return the torch modules it had imported."""
    script = (
        "import contextlib, io, json, sys\n"
        f"{code}\n"
        "loaded = [m for m in sys.modules if m == 'torch' or m.startswith('torch.')]\n"
        "print(json.dumps(sorted(loaded)))"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_building_the_nsl_parser_imports_no_torch():
    code = (
        "from nsl_bringup import cli\n"
        "cli.build_parser().parse_args(['experiment', 'run', '--stages', 'pretrain'])"
    )
    assert torch_modules_after(code) == []


@pytest.mark.parametrize("argv", HELP_COMMANDS, ids=" ".join)
def test_help_imports_no_torch(argv):
    code = (
        "from nsl_bringup import cli\n"
        "with contextlib.redirect_stdout(io.StringIO()) as text:\n"
        "    try:\n"
        f"        cli.main({argv!r})\n"
        "    except SystemExit as exc:\n"
        "        assert exc.code == 0, exc.code\n"
        "assert 'usage: nsl' in text.getvalue()"
    )
    assert torch_modules_after(code) == []


def test_the_check_sees_torch():
    """The probe itself reports torch once something imports it (so the checks above can fail)."""
    assert "torch" in torch_modules_after(
        "import nsl_experiment.cache; nsl_experiment.cache.hardware()"
    )
