"""What `rfgan train` and `rfgan tune` show on the terminal, and the log file that holds everything else.

The terminal gets rfgan's own lines: a progress bar while an epoch runs (on a terminal only), one summary line per
epoch, then the final table. Ray's output (its controller's reports, the workers' logs, Ray Data's plans and
warnings, the raylet's) goes to the run's log file, and to the terminal as well with `--verbose`.

A worker cannot draw on the driver's terminal: rank 0 sends its progress through a queue (a `ray.util.queue.Queue`
the driver made, an actor any node can reach), which a thread of the driver follows. No Ray import here: the queue
is handed in, and the pieces are tested with a plain one.
"""

from __future__ import annotations

import logging
import queue
import re
import signal
import sys
import threading
import time
from collections.abc import Callable, Mapping
from typing import IO, Any, TextIO

from tqdm import tqdm

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
# An epoch's line: (metric, label); the adversarial terms are not comparable across runs, SSIM ranks checkpoints.
EPOCH_COLUMNS = (
    ("train_g_total", "G"),
    ("train_errD", "D"),
    ("train_pix", "pix"),
    ("val_ssim", "val SSIM"),
    ("val_psnr", "PSNR"),
    ("val_pixel_corr", "pixel corr"),
    ("val_feature_corr", "feature corr"),
)


class ProgressSender:
    """Rank 0's side: the epoch's progress and its metrics, to the driver's queue (None: nobody follows, as in a
    sweep's trials). Progress goes at most every `every_s` seconds, and at the epoch's end: each put is a round trip
    to the queue's actor."""

    def __init__(self, queue: Any | None, every_s: float = 0.5) -> None:
        self.queue, self.every_s, self.last = queue, every_s, float("-inf")

    def step(self, epoch: int, done: int, total: int) -> None:
        now = time.monotonic()
        if self.queue is None or (done < total and now - self.last < self.every_s):
            return
        self.last = now
        self._put(("step", epoch, done, total))

    def epoch(self, metrics: Mapping[str, Any]) -> None:
        if self.queue is not None:
            self._put(("epoch", dict(metrics)))

    def _put(self, event: tuple) -> None:
        """The terminal's view is not worth the run: if the queue's actor is gone, training goes on without it (the
        metrics are in metrics.csv either way)."""
        try:
            self.queue.put_nowait(event)
        except Exception as e:  # Ray's errors for a dead actor; no Ray import here
            print(f"progress to the driver's terminal stopped: {type(e).__name__}: {e}", file=sys.stderr)
            self.queue = None


def epoch_line(metrics: Mapping[str, Any], epochs: int) -> str:
    """One epoch in one line: its losses, its validation metrics and its speed."""
    width = len(str(epochs))
    train = "  ".join(f"{label} {metrics[k]:.4g}" for k, label in EPOCH_COLUMNS[:3] if k in metrics)
    val = "  ".join(f"{label} {metrics[k]:.4g}" for k, label in EPOCH_COLUMNS[3:] if k in metrics)
    speed = f"{metrics['epoch_s']:.1f} s, {metrics['samples_per_s']:.1f} samples/s"
    return f"epoch {metrics['epoch']:>{width}}/{epochs}  {train}  |  {val}  |  {speed}"


class EpochProgress:
    """The driver's side of a run's progress: a bar for the running epoch (steps, samples/s, time left) on a
    terminal, replaced by the epoch's line when it ends. Handles the events ProgressSender sends."""

    def __init__(self, epochs: int, out: TextIO, bar_out: TextIO) -> None:
        self.epochs, self.out, self.bar_out = epochs, out, bar_out
        self.show_bars = _is_terminal(bar_out)
        self.bar: tqdm | None = None
        self.bar_epoch = 0

    def handle(self, event: tuple) -> None:
        if event[0] == "step":
            _, epoch, done, total = event
            if self.show_bars:
                self._draw(epoch, done, total)
        elif event[0] == "epoch":
            self._close_bar()
            print(epoch_line(event[1], self.epochs), file=self.out, flush=True)

    def _draw(self, epoch: int, done: int, total: int) -> None:
        if self.bar is None or epoch != self.bar_epoch:
            self._close_bar()
            self.bar_epoch = epoch
            # Counted from the first event (a step already done): the rate is then the rate since.
            self.bar = tqdm(
                total=total,
                initial=done,
                desc=f"epoch {epoch}/{self.epochs}",
                unit="samples",
                leave=False,
                file=self.bar_out,
                dynamic_ncols=True,
                mininterval=0,  # events come at most twice a second already (ProgressSender)
            )
        self.bar.update(done - self.bar.n)

    def _close_bar(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def close(self) -> None:
        self._close_bar()


class QueueFollower:
    """A driver thread handing each event of `events` (get(timeout=), qsize(), get_nowait_batch(n), as
    ray.util.queue.Queue has) to `handle`, until `stop`, which hands over what is left in order."""

    def __init__(self, events: Any, handle: Callable[[Any], None], poll_s: float = 0.5) -> None:
        self.events, self.handle, self.poll_s = events, handle, poll_s
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, name="rfgan-progress", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stopping.is_set():
            try:
                event = self.events.get(timeout=self.poll_s)
            except queue.Empty:
                continue
            except Exception:  # the queue's actor is gone (Ray shutting down): the run's outcome says why
                return
            self.handle(event)

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join()
        try:
            left = self.events.get_nowait_batch(self.events.qsize())
        except Exception:
            left = []
        for event in left:
            self.handle(event)


def _is_terminal(stream: IO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


class _Tee:
    """A text stream writing to the log file (without colour codes) and, when given, to a terminal stream (without
    them unless it is a terminal)."""

    def __init__(self, file: TextIO, echo: TextIO | None) -> None:
        self.file, self.echo = file, echo
        self.echo_ansi = echo is not None and _is_terminal(echo)

    def write(self, text: str) -> int:
        if not self.file.closed:
            self.file.write(ANSI.sub("", text))
        if self.echo is not None:
            self.echo.write(text if self.echo_ansi else ANSI.sub("", text))
        return len(text)

    def flush(self) -> None:
        if not self.file.closed:
            self.file.flush()
        if self.echo is not None:
            self.echo.flush()

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:
        # What writes below Python (faulthandler's tracebacks) goes to the log file.
        return self.file.fileno()


# Loggers whose terminal handlers Ray and its libraries set up themselves (they do not propagate to the root).
RAY_LOGGERS = ("ray", "ray.data", "ray.train", "ray.tune")


class RunLog:
    """Within it, what Ray writes in the driver goes to the log file at `path` (a local file), and to the terminal
    too when `verbose`: Ray prints the logs it forwards from its workers, and Python its warnings, to sys.stdout and
    sys.stderr as they are at each write, so both are redirected; Ray's loggers keep their own stream handlers,
    which are pointed at the same place. `out` and `err` are the terminal's streams, for rfgan's own lines."""

    active: RunLog | None = None  # the innermost one entered (say)

    def __init__(self, path: str, verbose: bool = False) -> None:
        self.path, self.verbose = path, verbose
        self.out, self.err = sys.stdout, sys.stderr

    def __enter__(self) -> RunLog:
        self.out, self.err = sys.stdout, sys.stderr
        self.file = open(self.path, "a", encoding="utf-8", buffering=1)  # noqa: SIM115 - closed in __exit__
        self.tee_out = _Tee(self.file, self.out if self.verbose else None)
        self.tee_err = _Tee(self.file, self.err if self.verbose else None)
        self.handler = logging.StreamHandler(self.tee_err)
        self.handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        rfgan_log = logging.getLogger("rfgan")
        self.level = rfgan_log.level
        rfgan_log.addHandler(self.handler)
        rfgan_log.setLevel(logging.INFO)
        self.restreamed: list[tuple[logging.StreamHandler, IO]] = []
        self._restream()
        sys.stdout, sys.stderr = self.tee_out, self.tee_err
        self.outer, RunLog.active = RunLog.active, self
        return self

    def _restream(self) -> None:
        """Ray's loggers' terminal handlers (also those ray.init set up since) to the tee; put back on exit."""
        for name in RAY_LOGGERS:
            for h in logging.getLogger(name).handlers:
                if _terminal_handler(h) and h.stream not in (self.tee_out, self.tee_err):
                    self.restreamed.append((h, h.setStream(self.tee_err)))

    def after_ray_init(self) -> None:
        self._restream()

    def __exit__(self, *exc) -> None:
        RunLog.active = self.outer
        sys.stdout, sys.stderr = self.out, self.err
        for h, stream in reversed(self.restreamed):
            h.setStream(stream)
        for name in RAY_LOGGERS:  # handlers made inside (by ray.init) write to the terminal from now on
            for h in logging.getLogger(name).handlers:
                if _terminal_handler(h) and h.stream in (self.tee_out, self.tee_err):
                    h.setStream(self.err)
        logging.getLogger("rfgan").removeHandler(self.handler)
        logging.getLogger("rfgan").setLevel(self.level)
        self.file.close()


def _terminal_handler(h: logging.Handler) -> bool:
    return isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)


def note(line: str) -> None:
    """A note of rfgan's for the user (a resumed run's starting point, the ridge fit), on the terminal's stderr also
    inside a RunLog."""
    print(line, file=RunLog.active.err if RunLog.active is not None else sys.stderr, flush=True)


def say(line: str) -> None:
    """A line of rfgan's on the terminal, also from code that runs inside a RunLog without holding it (Tune's
    callbacks, restored from a sweep's saved state)."""
    print(line, file=RunLog.active.out if RunLog.active is not None else sys.stdout, flush=True)


# The final validation metrics of `rfgan train`, in the order of the standard table (rfgan eval).
FINAL_COLUMNS = (
    ("val_psnr", "PSNR"),
    ("val_ssim", "SSIM"),
    ("val_pixel_corr", "pixel corr"),
    ("val_feature_corr", "feature corr"),
)


def final_table(metrics: Mapping[str, Any]) -> str:
    """The last epoch's validation metrics as a two-column table."""
    rows = [(label, f"{metrics[k]:.4g}") for k, label in FINAL_COLUMNS if metrics.get(k) is not None]
    if not rows:
        return "no validation metrics were reported"
    width = max(len(label) for label, _ in rows)
    return "\n".join([f"{'validation':<{width}}  last epoch"] + [f"{label:<{width}}  {v}" for label, v in rows])


_TERMINATED = threading.Event()


def sigterm_as_ctrl_c() -> None:
    """From now on, take SIGTERM (`kill`, a scheduler's stop, a container's shutdown) as Ctrl-C: the run is aborted
    the same graceful way and the command says how to go on (terminated() tells it which signal it was). Replaces
    ray.init's own handler, which ends the driver with SystemExit wherever it is (the process then aborted)."""

    def handler(signum, frame):
        _TERMINATED.set()
        # Through SIGINT's handler: Ray Train's own while fit() runs (it aborts the run before it raises), Python's
        # KeyboardInterrupt otherwise; raised directly where SIGINT is ignored (a background job).
        if callable(signal.getsignal(signal.SIGINT)):
            signal.raise_signal(signal.SIGINT)
        else:
            raise KeyboardInterrupt

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, handler)


def terminated() -> bool:
    """Whether the interrupt being handled came from SIGTERM (sigterm_as_ctrl_c)."""
    return _TERMINATED.is_set()
