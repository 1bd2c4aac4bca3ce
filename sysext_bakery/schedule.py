"""Which ready task a parallel run (`doit -n N`) starts next.

doit starts ready tasks in the order they became ready. Every fetch of a build is ready at
once (none waits for anything), so its parallel jobs download everything together first,
then stage and pack together: the network idles while the CPUs pack. Here the jobs keep one
download running whenever one is ready, and otherwise start the task that has been ready the
longest, so the next image downloads while another packs. Which tasks download is said by
their `meta` (`lane`); the order of everything else is doit's.

doit has no setting for this: `install` swaps the parallel runners doit's `run` command uses
for subclasses that only reorder what doit's dispatcher releases (doit is pinned in
pyproject.toml; tests/test_schedule.py fails if the names this relies on move). A serial run
is left alone: one job cannot overlap anything.
"""
from __future__ import annotations

from collections.abc import Generator
from typing import Any

from doit import cmd_run
from doit.runner import MRunner, MThreadRunner

LANE = "bakery_lane"   # task meta key
NETWORK = "network"    # its value for tasks that mostly wait on downloads

_HOLD = "hold on"      # doit's dispatcher: nothing is ready until a running task ends


def network_meta() -> dict[str, str]:
    """The `meta` entry that puts a task in the download lane."""
    return {LANE: NETWORK}


def _downloads(node: Any) -> bool:
    return (node.task.meta or {}).get(LANE) == NETWORK


def pick(ready: list[Any], running: list[Any]) -> int:
    """Index into `ready` (oldest first) of the task to start: a download when none runs,
    else the oldest other task, else the oldest download."""
    downloading = any(_downloads(n) for n in running)
    kinds = [_downloads(n) for n in ready]
    if not downloading and True in kinds:
        return kinds.index(True)
    return kinds.index(False) if False in kinds else 0


def reordered(inner: Generator[Any, Any, None]) -> Generator[Any, Any, None]:
    """doit's dispatcher protocol (send the task that ended or None; get a node, "hold on"
    or StopIteration) around `inner`: everything `inner` releases is taken at once and
    handed out in `pick` order. A node counts as running from being handed out until the
    runner sends it back (at once when doit finds it up to date)."""
    ready: list[Any] = []
    running: dict[str, Any] = {}
    exhausted = False
    ended = None
    while True:
        if ended is not None:
            running.pop(ended.task.name, None)
        while not exhausted:
            try:
                got = inner.send(ended)
            except StopIteration:
                exhausted = True
                break
            ended = None
            if isinstance(got, str) and got == _HOLD:
                break
            ready.append(got)
        ended = None
        if ready:
            node = ready.pop(pick(ready, list(running.values())))
            running[node.task.name] = node
            ended = yield node
        elif exhausted:
            return
        else:
            ended = yield _HOLD


class _Reordering:
    """Mixin for doit's parallel runners: their dispatcher hands out in `pick` order."""

    def _run_tasks_init(self, task_dispatcher: Any) -> None:
        task_dispatcher.generator = reordered(task_dispatcher.generator)
        super()._run_tasks_init(task_dispatcher)  # type: ignore[misc]


class ProcessRunner(_Reordering, MRunner):
    """`doit -n N` (processes)."""


class ThreadRunner(_Reordering, MThreadRunner):
    """`doit -n N -P thread`."""


def install() -> None:
    """Make doit's `run` command use the reordering runners for `-n N`."""
    cmd_run.MRunner = ProcessRunner
    cmd_run.MThreadRunner = ThreadRunner
