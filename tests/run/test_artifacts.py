"""RunArtifacts with real files: each epoch copies only what it changed into the run directory, local or a URI."""

from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from rfgan.run.artifacts import RunArtifacts, read_metrics_csv

EPOCHS = 6


def metrics(epoch: int) -> dict[str, float]:
    return {
        "epoch": epoch,
        "step": 5 * epoch,
        "train_pix": 1.0 / epoch,
        "val_ssim": 0.1 * epoch,
        "samples_per_s": 100.0,
    }


def pairs(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(4, 3, 16, 16, generator=g), torch.rand(4, 3, 16, 16, generator=g)


def mtimes(run: Path) -> dict[str, int]:
    return {p.relative_to(run).as_posix(): p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file()}


def epochs(run: Path) -> list[int]:
    return [int(r["epoch"]) for r in read_metrics_csv((run / "metrics.csv").read_text())]


# file:// goes through pyarrow's filesystem layer, the code path of s3:// and gs://.
@pytest.fixture(params=["local", "uri"])
def run_dir(request, tmp_path) -> tuple[Path, str]:
    path = tmp_path / "run"
    return path, str(path) if request.param == "local" else path.as_uri()


def test_each_epoch_copies_only_what_it_changed(run_dir):
    path, where = run_dir
    artifacts = RunArtifacts(where)
    seen: dict[str, int] = {}
    for epoch in range(1, EPOCHS + 1):
        copied = artifacts.epoch(metrics(epoch), *pairs(epoch))
        assert copied[:3] == [f"samples/epoch_{epoch:04d}.png", "metrics.csv", "curves.png"]
        assert len(copied) == 4 and copied[3].startswith("tensorboard/events.out.tfevents.")
        now = mtimes(path)
        # What the run directory shows as written this epoch is what epoch() says it copied: 4 files, whatever
        # the epoch, and no earlier grid among them.
        assert {name for name, t in now.items() if seen.get(name) != t} == set(copied)
        if epoch == 1:
            first_grid = now["samples/epoch_0001.png"]
        seen = now
    artifacts.close()
    assert mtimes(path)["samples/epoch_0001.png"] == first_grid
    assert sorted(p.name for p in (path / "samples").iterdir()) == [f"epoch_{e:04d}.png" for e in range(1, EPOCHS + 1)]
    assert epochs(path) == list(range(1, EPOCHS + 1))
    assert (path / "curves.png").read_bytes().startswith(b"\x89PNG")
    # The copied event file is whole: it holds every epoch's scalars and grid.
    events = EventAccumulator(str(path / "tensorboard"), size_guidance={"images": 0})  # 0: keep every one
    events.Reload()
    assert [e.step for e in events.Scalars("val/ssim")] == list(range(1, EPOCHS + 1))
    assert [e.step for e in events.Images("samples")] == list(range(1, EPOCHS + 1))


def test_a_resumed_run_keeps_the_rows_up_to_its_checkpoint(run_dir):
    path, where = run_dir
    first = RunArtifacts(where)
    for epoch in range(1, 5):
        first.epoch(metrics(epoch), *pairs(epoch))
    first.close()
    before = read_metrics_csv((path / "metrics.csv").read_text())
    # Restarted from the epoch-2 checkpoint: epochs 3 and 4 are trained again and their rows replaced.
    second = RunArtifacts(where, resume_epoch=2)
    assert second.rows == before[:2]
    second.epoch({**metrics(3), "val_ssim": 0.9}, *pairs(30))
    second.close()
    after = read_metrics_csv((path / "metrics.csv").read_text())
    assert after[:2] == before[:2] and epochs(path) == [1, 2, 3] and after[2]["val_ssim"] == 0.9
    # Rows written again keep their integers: "1,16", not "1.0,16.0".
    assert (path / "metrics.csv").read_text().splitlines()[1].startswith("1,")
    assert all(isinstance(r["epoch"], int) and isinstance(r["step"], int) for r in after)
    # The earlier writer's event file stays; the new writer adds its own.
    assert len(list((path / "tensorboard").glob("events.out.tfevents.*"))) == 2
    assert RunArtifacts(where, resume_epoch=0).rows == []
