"""Fixtures of the collector tests (pytest.ini puts dataset_helpers on the path)."""

import pytest


@pytest.fixture(autouse=True)
def _transition_cache(tmp_path_factory, monkeypatch):
    """Keep the loader's cache out of ~/.cache during tests."""
    monkeypatch.setenv("NSL_DATASET_CACHE", str(tmp_path_factory.mktemp("transition_cache")))
