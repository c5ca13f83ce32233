import os

import pytest
import torch

# The suite runs on small CPUs: one thread per worker keeps workers from fighting over cores.
torch.set_num_threads(max(1, int(os.environ.get("VITKIT_TEST_THREADS", "1"))))


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    """Tests never reach the network: a hub id that is not a local path fails instead of downloading."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
