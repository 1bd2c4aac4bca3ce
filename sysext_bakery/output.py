"""When the reader of our output goes away (`doit list | head -1`, `bakery inspect IMG | head`).

Python ignores SIGPIPE, so writing to a closed pipe raises BrokenPipeError wherever the write
happens, and doit prints that as a traceback. The usual fix for command-line tools, SIGPIPE
back to SIG_DFL, is used only where it is safe: for doit's commands that do nothing but print
(`list`, `info`, `help`, …). Everywhere else the process also talks to sockets (downloads,
GitHub) and writes files, and with SIG_DFL a server closing its end mid-request (a stale
pooled connection, which urllib3 retries) would kill the build on the spot, leaving its
temporary files behind; Python's signal docs warn against exactly this. There, the closed
pipe is caught at the edge (our actions, doit's reporter, `bakery`'s main), the rest of the
output goes to /dev/null and the process exits with 128 + SIGPIPE = 141, the status a shell
shows for a tool SIGPIPE ended, so `set -o pipefail` scripts see the same as with coreutils.
doit's own `finally` blocks still run on that exit: its state database is saved.
"""
from __future__ import annotations

import os
import signal
import sys
from typing import NoReturn, Sequence

from sysext_bakery import report

EXIT_CLOSED_PIPE = 128 + signal.SIGPIPE
# doit commands that only print: nothing to clean up, no sockets
PRINT_ONLY = {"list", "info", "help", "dumpdb", "tabcompletion"}



def to_devnull(fd: int) -> None:
    """What is still buffered for `fd`, and the rest, goes to /dev/null: Python flushes
    stdout at exit, which would fail again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, fd)
    os.close(devnull)


def closed(fd: int = 1) -> NoReturn:
    """The reader of `fd` is gone: exit quietly."""
    to_devnull(fd)
    raise SystemExit(EXIT_CLOSED_PIPE)


def doit_command(argv: Sequence[str]) -> str | None:
    """The doit command of a command line (None: the default, run), the way doit finds it:
    after its loader options (-f FILE, -d DIR) and NAME=VALUE variables."""
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg in report.LOADER_VALUES:
            skip = True
        elif not arg.startswith("-") and "=" not in arg:
            return arg
    return None


def setup_doit(argv: Sequence[str] | None = None) -> None:
    """Called when dodo.py is loaded: the print-only commands die quietly on a closed pipe."""
    if doit_command(sys.argv[1:] if argv is None else argv) in PRINT_ONLY:
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)


class Reporter(report.Reporter):
    """The bakery's console reporter, ending the run cleanly when stdout's reader is gone."""
    desc = "console output; problems named once at the end; a closed stdout ends the run (141)"

    def write(self, text: str) -> None:
        try:
            super().write(text)
        except BrokenPipeError:
            closed()

    def complete_run(self) -> None:
        # stdout to a pipe is block-buffered: most of a short run's output is only written
        # by the flush in here, and a failure at interpreter exit would print "Exception
        # ignored". On a closed stdout the summary is written again, into /dev/null, so the
        # problems it names still reach stderr.
        try:
            super().complete_run()
            self.outstream.flush()
        except BrokenPipeError:
            to_devnull(1)
            try:
                super().complete_run()
            except BrokenPipeError:   # stderr was the same pipe (`2>&1 | head`)
                to_devnull(2)
            raise SystemExit(EXIT_CLOSED_PIPE) from None
