"""`rfgan check`'s choice of Ray (rfgan.run.check); reading datasets through it is tested in tests/data."""

import pytest

from rfgan.run.check import check_dataset


class Started(Exception):
    pass


def test_check_starts_a_ray_of_its_own_unless_told_an_address(tiny_dataset, monkeypatch):
    """Was: ray.init() with no address, which joins any Ray that `ray start` left on the machine (the README's own
    job-submission flow starts one) and reads the dataset there. What ray.init is asked for is recorded here, and
    the check stopped at that point: what Ray then does with the address is Ray's own."""
    import ray

    asked = []

    def init(**kwargs):
        asked.append(kwargs)
        raise Started

    monkeypatch.setattr(ray, "init", init)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)  # as in a process of its own (this suite may hold one)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    with pytest.raises(Started):
        list(check_dataset(tiny_dataset))
    assert asked[-1]["address"] == "local"
    with pytest.raises(Started):
        list(check_dataset(tiny_dataset, address="auto"))  # as asked: the machine's running cluster
    assert asked[-1] == {"address": "auto"}


@pytest.mark.parametrize("batch", ["0", "-5"])
def test_a_batch_of_no_rows_is_refused_before_ray_starts(tiny_dataset, batch, capsys):
    """Was: after Ray's start, "read 0 rows but metadata.json says 40 … re-create the dataset" of a sound dataset."""
    from conftest import one_line_error

    from rfgan.cli import main

    assert main(["check", "--data", str(tiny_dataset), "--batch-size", batch]) == 2  # conftest's lane guard: no Ray
    assert f"--batch-size must be at least 1, not {batch}" in one_line_error(capsys, "check")
