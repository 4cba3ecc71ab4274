"""The `rfgan` command line: one module per command group (data, train, evaluate, tune, bench), each adding its
subcommands to the parser; `main` runs one and turns rfgan's own errors into one line and exit 2."""

from __future__ import annotations

import argparse
import sys
import threading
from collections.abc import Sequence

from rfgan.cli import bench, data, evaluate, train, tune
from rfgan.errors import user_error


def build_parser() -> argparse.ArgumentParser:
    from rfgan import __version__

    parser = argparse.ArgumentParser(
        prog="rfgan",
        description="Reconstruct seen images from electrode responses through their receptive "
        "fields, with a GAN, on a laptop or a Ray cluster.",
    )
    parser.add_argument("--version", action="version", version=f"rfgan {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    data.add_parsers(sub)
    train.add_parsers(sub)
    evaluate.add_parsers(sub)
    tune.add_parsers(sub)
    bench.add_parsers(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    import signal

    from rfgan.run.console import sigterm_as_ctrl_c

    args = build_parser().parse_args(argv)
    # SIGTERM (`kill`, a scheduler's stop) ends every command as Ctrl-C does: its staging removed, one line, 143
    # (third audit: synth, ingest, export and baseline died at once and left their staging behind).
    previous = signal.getsignal(signal.SIGTERM)
    sigterm_as_ctrl_c()
    try:
        return args.func(args)
    except KeyboardInterrupt as e:
        # Ctrl-C is the user's own doing: one line, with what the command knows about what it left (the
        # interrupt's message), and 130, what a shell reports for a command stopped by SIGINT; a SIGTERM that a
        # command running Ray takes the same way (sigterm_as_ctrl_c), 143.
        from rfgan.run.console import terminated

        stop, code = ("terminated", 143) if terminated() else ("interrupted", 130)
        print(f"rfgan {args.command}: {stop}{f'; {e}' if str(e) else ''}", file=sys.stderr)
        return code
    except Exception as e:
        # rfgan's own errors, and OSErrors (unreadable paths, missing buckets, refused credentials: the system's
        # message says which), also when Ray wrapped them in a task's error: one line, exit 2. Anything else is a
        # bug, and its traceback is the report.
        shown = user_error(e)
        if shown is None:
            raise
        print(f"rfgan {args.command}: error: {str(shown).strip().replace(chr(10), ' ')}", file=sys.stderr)
        return 2
    finally:
        if threading.current_thread() is threading.main_thread() and previous is not None:
            signal.signal(signal.SIGTERM, previous)
