"""A parallel build downloads the next image while another packs (sysext_bakery/schedule.py):
`pick_download` on plain values, the reordered dispatcher against doit's own on one task graph, and
real `doit -n 2 build` runs (processes and threads) whose order a held download makes
deterministic."""
from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from doit.control import TaskControl
from doit.task import Task

from catalogue import synthesize
from conftest import REPO, Project, executed
from sysext_bakery import schedule
from upstream import MirrorServer, Upstream


@pytest.mark.parametrize("downloading, downloads_ready, others_ready, download", [
    (0, 1, 1, True),       # the network idles: download
    (1, 1, 2, False),      # one download runs: the oldest other task
    (1, 1, 0, True),       # nothing else is ready: a second download
    (1, 0, 2, False),
    (0, 0, 2, False),      # no download ready
])
def test_pick_download(downloading, downloads_ready, others_ready, download) -> None:
    assert schedule.pick_download(downloading, downloads_ready, others_ready) is download


def _noop() -> None:
    pass


def dispatcher_of(images: int):
    """doit's dispatcher for `build` over fetch -> stage -> pack per image."""
    tasks = []
    for i in range(images):
        tasks += [Task(f"fetch:{i}", [_noop], meta=schedule.network_meta()),
                  Task(f"stage:{i}", [_noop], task_dep=[f"fetch:{i}"]),
                  Task(f"pack:{i}", [_noop], task_dep=[f"stage:{i}"])]
    tasks.append(Task("build", None, task_dep=[f"pack:{i}" for i in range(images)]))
    control = TaskControl(tasks)
    control.process(["build"])
    return control.task_dispatcher()


def started(generator, slots: int = 2) -> list[str]:
    """The order a runner with `slots` jobs starts tasks in, when the oldest running task is
    always the next to end."""
    order: list[str] = []
    running: list = []
    ended = None
    while True:
        try:
            got = generator.send(ended)
        except StopIteration:
            return order
        ended = None
        if isinstance(got, str):            # "hold on": wait for a running task
            ended = running.pop(0)
            continue
        order.append(got.task.name)
        running.append(got)
        if len(running) == slots:
            ended = running.pop(0)


def test_the_reordered_dispatcher_stages_while_doits_own_downloads_everything_first() -> None:
    doits = started(dispatcher_of(4).generator)
    ours = started(schedule.reordered(dispatcher_of(4).generator))
    # doit's order, the reason schedule.py exists: every fetch before any stage
    assert doits[:4] == [f"fetch:{i}" for i in range(4)]
    assert ours[:4] == ["fetch:0", "fetch:1", "stage:0", "fetch:2"]
    assert sorted(ours) == sorted(doits) and len(ours) == len(set(ours)) == 13
    for i in range(4):                      # dependencies still come first
        assert ours.index(f"fetch:{i}") < ours.index(f"stage:{i}") < ours.index(f"pack:{i}")
    assert ours[-1] == "build"


def test_an_empty_graph_ends_at_once() -> None:
    control = TaskControl([Task("build", None)])
    control.process(["build"])
    assert started(schedule.reordered(control.task_dispatcher().generator)) == ["build"]


VERSIONS = ["1.34.0", "1.35.0", "1.36.0"]


@pytest.mark.parametrize("parallel", [["-n", "2"], ["-n", "2", "-P", "thread"]],
                         ids=["processes", "threads"])
def test_doit_n2_packs_an_image_while_the_next_download_runs(tmp_path: Path, parallel) -> None:
    """The second download hangs: the job that fetched the first image stages and packs it
    before it starts the third download (doit's own order would fetch the third first)."""
    up = Upstream(tmp_path / "upstream")
    made = synthesize(REPO / "recipes", "crictl", VERSIONS, up, arches=["x86-64"])
    url = {a.version: a.url for a in made.artifacts}
    path = {v: "/" + u.removeprefix("https://") for v, u in url.items()}
    mirror = MirrorServer(up.root)
    held = mirror.holds[path["1.35.0"]] = threading.Event()
    try:
        lock = {"crictl": {v: {"x86-64": {"sources": [{"url": url[v], "sha256": up.sha256[url[v]]}]}}
                           for v in VERSIONS}}
        (tmp_path / "bakery").mkdir()
        project = Project(tmp_path / "bakery", mirror, lock)
        env = {**os.environ, "BAKERY_MIRROR": mirror.url, "BAKERY_ARCH": "x86-64",
               "BAKERY_COMPRESSION": "gzip"}
        proc = subprocess.Popen([sys.executable, "-m", "doit", *parallel, "build"],
                                cwd=project.root, env=env, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            end = time.monotonic() + 120
            while not any(r.startswith(path["1.36.0"]) for r in mirror.requests):
                assert proc.poll() is None and time.monotonic() < end, "the third download never started"
                time.sleep(0.05)
            held.set()
            out, err = proc.communicate(timeout=120)
        finally:
            held.set()
            proc.kill()
    finally:
        mirror.close()
    assert proc.returncode == 0, out + err
    ran = executed(subprocess.CompletedProcess([], 0, out, err))
    first, third = "crictl-1.34.0-x86-64", "crictl-1.36.0-x86-64"
    assert ran.index(f"pack:{first}") < ran.index(f"fetch:{third}"), ran
    assert sorted(p.name for p in project.images.glob("*.raw")) == [
        f"crictl-{v}-x86-64.raw" for v in VERSIONS]
    assert [sum(1 for r in mirror.requests if r.startswith(p)) for p in path.values()] == [1, 1, 1]


def test_doits_run_command_still_picks_its_parallel_runners_by_the_names_install_replaces() -> None:
    """install() rebinds doit.cmd_run.MRunner and MThreadRunner; doit's run command must still
    look them up there when it starts a `-n N` run (doit is pinned; this fails on a doit that
    moved them, instead of a silently unordered build)."""
    import inspect

    from doit import cmd_run
    from doit.runner import MRunner, MThreadRunner
    source = inspect.getsource(cmd_run.Run._execute)
    assert "RunnerClass = MRunner" in source and "RunnerClass = MThreadRunner" in source
    assert hasattr(MRunner, "_run_tasks_init") and hasattr(dispatcher_of(1), "generator")
    schedule.install()
    assert cmd_run.MRunner is schedule.ProcessRunner and cmd_run.MThreadRunner is schedule.ThreadRunner
    assert issubclass(schedule.ProcessRunner, MRunner) and issubclass(schedule.ThreadRunner, MThreadRunner)
