"""The one line a failed run is reported with (rfgan.errors.failure_reason), on Ray's own exception types."""

from ray.exceptions import ActorDiedError
from ray.train.v2.api.exceptions import WorkerGroupError

from rfgan.errors import TrainingDiverged, failure_reason


def test_a_worker_group_failure_names_the_rank_that_died_not_the_one_its_collective_broke():
    broken = RuntimeError("Connection closed by peer [127.0.0.1]:35411\nTraceback ...")
    error = WorkerGroupError("[Rank 0]\n...\n[Rank 1]\n...", {0: broken, 1: ActorDiedError()})
    assert str(error).splitlines()[0] == "Training failed due to worker errors:"  # what it said before
    reason = failure_reason(error)
    assert reason == (
        "rank 1: ActorDiedError: The actor died unexpectedly before finishing this task. (and 1 more rank(s))"
    )


def test_rfgan_own_reason_wins_and_other_errors_give_their_first_line():
    diverged = TrainingDiverged("training diverged in epoch 3: errG became NaN/inf. Lower the learning rates")
    error = WorkerGroupError("...", {0: diverged})
    error.__cause__ = diverged
    assert failure_reason(error).startswith("training diverged in epoch 3")
    bad = WorkerGroupError("", {2: ValueError("\n  bad value\nmore")})
    assert failure_reason(bad) == "rank 2: ValueError: bad value"
    assert failure_reason(RuntimeError("")) == "RuntimeError"


def test_rfgan_own_reason_is_found_in_a_ranks_failure_as_text_and_ray_colours_are_dropped():
    # As a rank's Ray Data read that met a damaged shard arrives: Ray's wrapper, its colour codes, the worker's
    # traceback as text (the exception object itself is not kept across the processes).
    text = (
        "\x1b[36mray::SplitCoordinator.get()\x1b[39m (pid=1, ip=10.0.0.1)\nTraceback (most recent call last):\n"
        "  ...\nrfgan.errors.DataError: d/train/part-00000.parquet: its content is not what was written"
    )
    error = WorkerGroupError("...", {0: RuntimeError(text)})
    assert failure_reason(error) == "d/train/part-00000.parquet: its content is not what was written"
    plain = WorkerGroupError("...", {0: RuntimeError(text.split("\nTraceback")[0])})
    assert failure_reason(plain) == "rank 0: RuntimeError: ray::SplitCoordinator.get() (pid=1, ip=10.0.0.1)"


def test_a_controller_failure_names_what_the_controller_died_of():
    from ray.train.v2.api.exceptions import ControllerError

    died = UnicodeEncodeError("ascii", "rün", 1, 2, "ordinal not in range(128)")
    error = ControllerError(died)
    assert str(error).startswith("Training failed due to controller error:")
    assert failure_reason(error) == (
        "Ray Train's controller failed: UnicodeEncodeError: 'ascii' codec can't encode character '\\xfc' in "
        "position 1: ordinal not in range(128)"
    )


def test_an_actor_whose_constructor_raised_names_its_class_and_the_exception_and_is_not_a_lost_worker():
    from ray.exceptions import RayTaskError

    from rfgan.run.restarts import lost_workers

    raised = RayTaskError(
        "TrainController.__init__",
        'Traceback (most recent call last):\n  File "controller.py", line 9, in __init__\n'
        "OSError: When resolving region for bucket 'rfgan': AWS Error NETWORK_CONNECTION",
        OSError("unreachable"),
        proctitle="ray::TrainController.__init__()",
        pid=764,
        ip="10.0.0.2",
    )
    error = ActorDiedError(raised)
    assert failure_reason(error) == (
        "TrainController could not start: OSError: When resolving region for bucket 'rfgan': AWS Error "
        "NETWORK_CONNECTION"
    )
    assert not lost_workers(error) and lost_workers(ActorDiedError())  # raised once, it would raise again
