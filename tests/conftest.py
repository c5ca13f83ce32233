import os

import pytest
import torch

# The suite runs on small CPUs: one thread per worker keeps workers from fighting over cores.
torch.set_num_threads(max(1, int(os.environ.get("VITKIT_TEST_THREADS", "1"))))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
