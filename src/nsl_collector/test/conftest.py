import sys
from pathlib import Path

_SRC = Path(__file__).resolve().parents[2]
for _p in (_SRC / "nsl_collector", _SRC / "nsl_policy"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))


import pytest


@pytest.fixture(autouse=True)
def _transition_cache(tmp_path_factory, monkeypatch):
    """Keep the loader's cache out of ~/.cache during tests."""
    monkeypatch.setenv("NSL_DATASET_CACHE", str(tmp_path_factory.mktemp("transition_cache")))
