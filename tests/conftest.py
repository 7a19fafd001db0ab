"""Shared test setup: everything offline, deterministic, on tiny models."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import pytest  # noqa: E402
import torch  # noqa: E402

# Tiny models gain nothing from threads, and OpenMP threads oversubscribed on a busy 2-core machine
# slow every forward down a thousandfold.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _isolated_hash_cache(tmp_path, monkeypatch):
    """Model hashes go to a per-test cache, never the user's."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
