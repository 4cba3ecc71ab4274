"""The terminal of `rfgan train` and `rfgan tune`, without Ray: progress events, epoch lines, the log file."""

import io
import logging
import queue
import sys

from rfgan.run.console import (
    EpochProgress,
    ProgressSender,
    QueueFollower,
    RunLog,
    epoch_line,
    final_table,
    say,
)

METRICS = {
    "epoch": 3,
    "step": 24,
    "train_g_total": 1.2236,
    "train_errD": 1.0687,
    "train_pix": 0.12025,
    "val_psnr": 18.434,
    "val_ssim": 0.39389,
    "val_pixel_corr": 0.44589,
    "samples_per_s": 46.48,
    "epoch_s": 5.5077,
}


class FakeTerminal(io.StringIO):
    def isatty(self):
        return True


def test_epoch_line_has_the_losses_and_validation_metrics_that_matter():
    line = epoch_line(METRICS, 12)
    assert line == (
        "epoch  3/12  G 1.224  D 1.069  pix 0.1202  |  val SSIM 0.3939  PSNR 18.43  pixel corr 0.4459  |  "
        "5.5 s, 46.5 samples/s"
    )
    assert "\x1b" not in line


def test_the_final_table_lists_the_validation_metrics():
    assert final_table(METRICS).splitlines() == [
        "validation  last epoch",
        "PSNR        18.43",
        "SSIM        0.3939",
        "pixel corr  0.4459",
    ]
    assert final_table({}) == "no validation metrics were reported"


def test_progress_is_sent_at_most_every_interval_and_always_at_the_end():
    sent = []
    q = type("Q", (), {"put_nowait": lambda self, item: sent.append(item)})()
    sender = ProgressSender(q, every_s=3600)
    for done in (8, 16, 24, 32):
        sender.step(2, done, 32)
    sender.epoch(METRICS)
    assert sent == [("step", 2, 8, 32), ("step", 2, 32, 32), ("epoch", METRICS)]
    ProgressSender(None).step(1, 8, 32)  # nobody follows (a sweep's trial): nothing to do


def test_a_lost_progress_queue_stops_the_progress_not_the_training(capsys):
    calls = []

    def gone(item):
        calls.append(item)
        raise RuntimeError("The actor died because its node has died.")

    sender = ProgressSender(type("Q", (), {"put_nowait": lambda self, item: gone(item)})(), every_s=0)
    sender.step(1, 8, 32)
    sender.step(1, 16, 32)
    sender.epoch(METRICS)
    assert len(calls) == 1 and sender.queue is None
    assert "progress to the driver's terminal stopped: RuntimeError: The actor died" in capsys.readouterr().err


def test_bars_only_on_a_terminal_and_one_line_per_epoch():
    out, piped = io.StringIO(), io.StringIO()
    progress = EpochProgress(12, out, piped)
    for event in [("step", 3, 8, 32), ("step", 3, 32, 32), ("epoch", METRICS)]:
        progress.handle(event)
    progress.close()
    assert piped.getvalue() == "" and out.getvalue() == epoch_line(METRICS, 12) + "\n"

    out, terminal = io.StringIO(), FakeTerminal()
    progress = EpochProgress(12, out, terminal)
    progress.handle(("step", 3, 8, 32))
    progress.handle(("step", 3, 16, 32))
    assert "epoch 3/12" in terminal.getvalue() and "16/32" in terminal.getvalue()
    progress.handle(("epoch", METRICS))
    assert progress.bar is None and out.getvalue() == epoch_line(METRICS, 12) + "\n"


def test_the_follower_hands_over_every_event_in_order():
    class Events(queue.Queue):
        def get_nowait_batch(self, n):
            return [self.get_nowait() for _ in range(n)]

    events, seen = Events(), []
    follower = QueueFollower(events, seen.append, poll_s=0.01)
    for i in range(5):
        events.put(("step", 1, i, 5))
    follower.stop()
    events.put(("epoch", METRICS))  # after stop: not taken
    assert seen == [("step", 1, i, 5) for i in range(5)]


def test_run_log_keeps_what_ray_writes_in_the_file_not_on_the_terminal(tmp_path, capsys):
    path = tmp_path / "train.log"
    ray_logger = logging.getLogger("ray")
    own = logging.StreamHandler(sys.stderr)  # as Ray sets up its logger, on the stream of the time
    ray_logger.addHandler(own)
    with RunLog(str(path)) as log:
        print("\x1b[36m(RayTrainWorker pid=1)\x1b[0m Reporting training result 1: TrainingReport(...)")
        print("(raylet) WARNING: 8 PYTHON worker processes", file=sys.stderr)
        ray_logger.warning("Started a local Ray instance.")
        logging.getLogger("rfgan.run.train").info("precision: fp32")
        say("epoch 1/2  G 1.48")
        print("done", file=log.out)
    ray_logger.removeHandler(own)
    captured = capsys.readouterr()
    assert captured.out == "epoch 1/2  G 1.48\ndone\n" and "Ray" not in captured.err
    text = path.read_text()
    assert "(RayTrainWorker pid=1) Reporting training result 1" in text and "\x1b" not in text
    assert "8 PYTHON worker processes" in text and "Started a local Ray instance." in text
    assert "precision: fp32" in text and "epoch 1/2" not in text
    print("after")  # the streams are put back
    assert capsys.readouterr().out == "after\n"


def test_run_log_verbose_shows_ray_on_the_terminal_without_colour_when_piped(tmp_path, capsys):
    with RunLog(str(tmp_path / "train.log"), verbose=True):
        print("\x1b[36m(TrainController pid=2)\x1b[0m Started training worker group")
    out = capsys.readouterr().out
    assert out == "(TrainController pid=2) Started training worker group\n"
    assert "Started training worker group" in (tmp_path / "train.log").read_text()
