"""Helpers shared by the parity tests against diffusers/transformers."""

import numpy as np
import pytest


def rel_l2(a, b) -> float:
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


@pytest.fixture(scope="module")
def single_threaded_torch():
    """The tiny reference models run fastest on one thread, and torch's spinning workers fight ggml's for the
    cores; restored afterwards so other test modules keep their setting. Use it with
    `pytestmark = pytest.mark.usefixtures("single_threaded_torch")`."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
