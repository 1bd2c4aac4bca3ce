"""Which ready task a parallel run (`doit -n N`) starts next.

doit starts ready tasks in the order they became ready. Every fetch of a build is ready at
once (none waits for anything), so its parallel jobs download everything together first,
then stage and pack together: the network idles while the CPUs pack. Here the jobs keep one
download running whenever one is ready, otherwise start the stage or pack that has been ready
the longest, and with nothing else ready a further download, so the next image downloads
while another packs. Which tasks download is said by their `meta` (`LANE`); within each kind
the order is doit's.

doit has no setting for this: `install` swaps the parallel runners doit's `run` command uses
for subclasses that only reorder what doit's dispatcher releases (doit is pinned in
pyproject.toml; tests/test_schedule.py fails if the names this relies on move). A serial run
is left alone: one job cannot overlap anything.

The same subclasses keep Ctrl-C and SIGTERM for the main thread of every process of the run
(`tidy.stop_signals_to_main_thread`): the threads multiprocessing's queues start to feed
their pipes, and `-P thread`'s workers, would otherwise take a signal meant for a main
thread waiting in a download, which then ran on until its read timed out.
"""
from __future__ import annotations

import multiprocessing
import multiprocessing.queues
from collections import deque
from collections.abc import Generator
from typing import Any

from doit import cmd_run
from doit.runner import MRunner, MThreadRunner

from sysext_bakery.build import tidy

LANE = "bakery_lane"   # task meta key
NETWORK = "network"    # its value for tasks that mostly wait on downloads

_HOLD = "hold on"      # doit's dispatcher: nothing is ready until a running task ends


def network_meta() -> dict[str, str]:
    """The `meta` entry that puts a task in the download lane."""
    return {LANE: NETWORK}


def _downloads(node: Any) -> bool:
    return (node.task.meta or {}).get(LANE) == NETWORK


def pick_download(downloading: int, downloads_ready: int, others_ready: int) -> bool:
    """Whether the next task to start is the oldest ready download (else the oldest other
    one): a download when none runs, or when nothing else is ready."""
    return downloads_ready > 0 and (downloading == 0 or others_ready == 0)


def reordered(inner: Generator[Any, Any, None]) -> Generator[Any, Any, None]:
    """doit's dispatcher protocol (send the task that ended or None; get a node, "hold on"
    or StopIteration) around `inner`: everything `inner` releases is taken at once and
    handed out in `pick_download` order, oldest first within each kind. A node counts as
    running from being handed out until the runner sends it back (at once when doit finds it
    up to date). Queues, not a scan: a no-op run of a thousand images passes through here."""
    downloads: deque[Any] = deque()
    others: deque[Any] = deque()
    running: dict[str, bool] = {}         # task name -> whether it downloads
    downloading = 0
    exhausted = False
    ended = None
    while True:
        if ended is not None and running.pop(ended.task.name, False):
            downloading -= 1
        while not exhausted:
            try:
                got = inner.send(ended)
            except StopIteration:
                exhausted = True
                break
            ended = None
            if isinstance(got, str) and got == _HOLD:
                break
            (downloads if _downloads(got) else others).append(got)
        ended = None
        if downloads or others:
            download = pick_download(downloading, len(downloads), len(others))
            node = downloads.popleft() if download else others.popleft()
            running[node.task.name] = download
            downloading += download
            ended = yield node
        elif exhausted:
            return
        else:
            ended = yield _HOLD


class _Reordering:
    """Mixin for doit's parallel runners: their dispatcher hands out in `reordered` order."""

    def _run_tasks_init(self, task_dispatcher: Any) -> None:
        task_dispatcher.generator = reordered(task_dispatcher.generator)
        super()._run_tasks_init(task_dispatcher)  # type: ignore[misc]


class _Queue(multiprocessing.queues.Queue):  # type: ignore[type-arg]
    """doit's queue between a run and its `-n` children. Its first `put` in a process starts
    a feeder thread, which inherits the stop signals blocked here."""

    def put(self, obj: Any, block: bool = True, timeout: float | None = None) -> None:
        with tidy.stop_signals_held():
            super().put(obj, block, timeout)


def _queue() -> _Queue:
    return _Queue(ctx=multiprocessing.get_context())


class _Worker(MThreadRunner.DaemonThread):
    """A `-P thread` job."""

    def run(self) -> None:
        tidy.stop_signals_to_main_thread()
        super().run()


class ProcessRunner(_Reordering, MRunner):
    """`doit -n N` (processes)."""
    Queue = staticmethod(_queue)


class ThreadRunner(_Reordering, MThreadRunner):
    """`doit -n N -P thread`."""
    Child = staticmethod(_Worker)


def install() -> None:
    """Make doit's `run` command use the reordering runners for `-n N`."""
    cmd_run.MRunner = ProcessRunner
    cmd_run.MThreadRunner = ThreadRunner
