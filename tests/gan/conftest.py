"""A fixed batch for the step and fast-path tests."""

import pytest

from rfgan.data.format import read_info, read_rfs, read_split, to_tensors


@pytest.fixture(scope="module")
def problem(tiny_dataset):
    """16 fixed samples of the tiny synthetic dataset (12 electrodes in V1/V4/IT, 32×32 RGB)."""
    info, rfs = read_info(tiny_dataset), read_rfs(tiny_dataset)
    batch = read_split(tiny_dataset, "train")
    responses, images = to_tensors({k: batch[k][:16] for k in ("responses", "image")})
    return info, rfs, responses, images
