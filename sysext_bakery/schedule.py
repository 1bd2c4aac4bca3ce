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

The same subclasses see that Ctrl-C and SIGTERM stop a run promptly. The kernel gives a
signal sent to a process to any thread not blocking it, and Python runs the handler in the
main thread only, when that thread next runs Python code; a main thread waiting in a socket
read or on a lock is not woken by a signal another thread took:
- the threads multiprocessing's queues start to feed their pipes block the stop signals, so
  a `-n` child's main thread, waiting in a download, takes them (`tidy.stop_signals_held`);
- under `-P thread` the workers start programs (mksquashfs, gpg), which would inherit a
  blocked mask, so they keep theirs open; the main thread instead waits for results in
  slices (`SIGNAL_POLL`) and so runs a handler within one slice, whichever thread the
  signal went to.
"""
from __future__ import annotations

import multiprocessing
import multiprocessing.queues
import queue
from collections import deque
from collections.abc import Generator
from typing import Any

from doit import cmd_run
from doit.runner import MRunner, MThreadRunner

from sysext_bakery.build import tidy

LANE = "bakery_lane"   # task meta key
NETWORK = "network"    # its value for tasks that mostly wait on downloads

SIGNAL_POLL = 0.25     # seconds: how soon a -P thread run sees a stop signal a worker took
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


class _PollingQueue(queue.Queue):  # type: ignore[type-arg]
    """`-P thread`'s queues: a `get` without a timeout waits in slices of SIGNAL_POLL."""

    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        if not block or timeout is not None:
            return super().get(block, timeout)
        while True:
            try:
                return super().get(timeout=SIGNAL_POLL)
            except queue.Empty:
                continue


class ProcessRunner(_Reordering, MRunner):
    """`doit -n N` (processes)."""
    Queue = staticmethod(_queue)


class ThreadRunner(_Reordering, MThreadRunner):
    """`doit -n N -P thread`."""
    Queue = staticmethod(_PollingQueue)


def install() -> None:
    """Make doit's `run` command use the reordering runners for `-n N`."""
    cmd_run.MRunner = ProcessRunner
    cmd_run.MThreadRunner = ThreadRunner
