"""Run the ``scratchformer`` command in the test's own process (shared by the CLI tests)."""

from __future__ import annotations

import signal

from scratchformer import cli


def main(*args) -> int:
    """The command in this process; the Ctrl-C handler it leaves (it ignores Ctrl-C until the
    program exits) is undone."""
    handler = signal.getsignal(signal.SIGINT)
    try:
        return cli.main([str(a) for a in args])
    except SystemExit as exit_:            # argparse's usage errors
        return exit_.code
    finally:
        signal.signal(signal.SIGINT, handler)


def scratchformer(capsys, *args) -> tuple[int, str, str]:
    """Run the command in this process: (exit code, stdout, stderr)."""
    capsys.readouterr()
    code = main(*args)
    out, err = capsys.readouterr()
    return code, out, err
