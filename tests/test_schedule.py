"""A parallel build downloads the next image while another packs (sysext_bakery/schedule.py):
`pick_download` on plain values, the reordered dispatcher against doit's own on one task graph
and, through doit's own runner, on random graphs ended in random order; real `doit -n 2 build`
runs (processes and threads) whose order a held download makes deterministic, and one with a
failing download under -c followed by the runs that finish and find it up to date."""
from __future__ import annotations

import io
import os
import random
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from doit.control import TaskControl
from doit.dependency import Dependency, JsonDB
from doit.exceptions import TaskFailed
from doit.reporter import ZeroReporter
from doit.runner import JobHold, MRunner
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


def random_graph(rnd: random.Random) -> list[Task]:
    """Up to 30 tasks, each after up to 4 earlier ones (task_dep), some also after a setup
    task or a calc_dep that adds a task_dep once it ran, half of them downloads; "all" needs
    every one, like `build` does the images."""
    tasks = []
    for i in range(rnd.randint(1, 30)):
        deps = rnd.sample([f"t{j}" for j in range(i)], k=min(i, rnd.choice([0, 0, 1, 1, 2, 4])))
        setup = [f"t{rnd.randrange(i)}"] if i > 2 and rnd.random() < 0.15 else []
        calc = [f"c{i}"] if i > 3 and rnd.random() < 0.1 else []
        tasks.append(Task(f"t{i}", [_noop], task_dep=deps, setup=setup, calc_dep=calc,
                          uptodate=[rnd.random() < 0.3],   # True: up to date, never runs
                          meta=schedule.network_meta() if rnd.random() < 0.5 else None))
        if calc:
            tasks.append(Task(f"c{i}", [_noop], meta={"adds": f"t{rnd.randrange(i)}"}))
    return tasks + [Task("all", None, task_dep=[t.name for t in tasks])]


def run_randomly(runner_class: type[MRunner], tasks: list[Task], selected: list[str], slots: int,
                 fails: set[str], continue_: bool, ends: random.Random,
                 db: Path) -> tuple[list[str], dict, int]:
    """doit's MRunner.run_tasks with `slots` jobs, minus the processes: the runner's own
    get_next_job, select_task and process_task_result (a real dependency db), while a random
    running task is the next to end. The start/end log, each task's final status, doit's
    result."""
    control = TaskControl(tasks)
    control.process(selected)
    dispatcher = control.task_dispatcher()
    runner = runner_class(Dependency(JsonDB, str(db)), ZeroReporter(io.StringIO(), {}),
                          continue_=continue_, num_process=slots)
    runner._run_tasks_init(dispatcher)
    log: list[str] = []
    running: list[str] = []

    def take(job) -> bool:
        if job is not None and not isinstance(job, JobHold):
            running.append(job.name)
            log.append(f"start {job.name}")
        return job is not None

    jobs = 0
    while jobs < slots and take(runner.get_next_job(None)):   # _run_start_processes
        jobs += 1
    while jobs:
        assert running, "every job holds and none runs: the run would hang"
        name = running.pop(ends.randrange(len(running)))
        log.append(f"end {name}")
        node = dispatcher.nodes[name]
        if "adds" in (node.task.meta or {}):
            node.task.values = {"task_dep": [node.task.meta["adds"]]}
        runner.process_task_result(node, TaskFailed("failed") if name in fails else None)
        free, runner.free_proc, completed = runner.free_proc + 1, 0, node
        for _ in range(free):
            if not take(runner.get_next_job(completed)):
                jobs -= 1
            completed = None
        assert len(log) < 10 * len(tasks)
    runner.dep_manager.close()
    return log, {n: node.run_status for n, node in dispatcher.nodes.items()}, runner.final_result


def test_random_graphs_run_each_task_once_after_its_dependencies_as_doit_would(
        tmp_path: Path) -> None:
    """The reordering must hand out every node doit's dispatcher releases exactly once, never
    a task before what it waits for ended, and not stall ("hold on", the end of the
    dispatcher): on random graphs with up-to-date tasks, failures (with and without -c), setup
    tasks and calc_dep, for a group or a few named tasks, ended in random order, against
    doit's own runner on the same graph."""
    for seed in range(300):
        rnd = random.Random(seed)
        shape = random_graph(rnd)
        fails = {t.name for t in shape if rnd.random() < 0.08}
        slots, continue_ = rnd.choice([1, 2, 3, 5]), rnd.random() < 0.6
        # the group, or tasks named on the command line (`doit -n 2 fetch:a stage:b`): then
        # doit's dispatcher ends while what it released still waits to be handed out
        selected = ["all"] if rnd.random() < 0.5 else sorted(
            {t.name for t in shape if t.name.startswith("t") and rnd.random() < 0.4} or {"t0"})
        outcome = {}
        for runner_class in (schedule.ProcessRunner, MRunner):
            tasks = random_graph(random.Random(seed))
            db = tmp_path / f"{seed}-{runner_class.__name__}.json"
            log, status, result = run_randomly(runner_class, tasks, selected, slots, fails,
                                               continue_, random.Random(seed), db)
            where = f"seed {seed}, {runner_class.__name__}"
            started = [line.split()[1] for line in log if line.startswith("start ")]
            assert len(started) == len(set(started)), where
            ended = [line.split()[1] for line in log if line.startswith("end ")]
            assert sorted(started) == sorted(ended), where
            for task in tasks:
                if task.name in started:
                    begun = log.index(f"start {task.name}")
                    for dep in (*task.task_dep, *task.setup_tasks, *task.calc_dep):
                        assert f"start {dep}" not in log or f"end {dep}" in log[:begun], \
                            f"{where}: {task.name} before {dep} ended"
            outcome[runner_class] = (sorted(started), status, result)
        if continue_:   # all that can run does: the same tasks and statuses as doit's
            ours, doits = outcome.values()
            assert ours == doits, f"seed {seed}"
            assert all(s in ("successful", "failure", "up-to-date") for s in ours[1].values()), seed


VERSIONS = ["1.34.0", "1.35.0", "1.36.0"]


PARALLEL = pytest.mark.parametrize("parallel", [["-n", "2"], ["-n", "2", "-P", "thread"]],
                                   ids=["processes", "threads"])


@pytest.fixture
def crictl(tmp_path: Path):
    """A project with crictl VERSIONS pinned (x86-64, gzip) and its mirror; the mirror path
    of each version's download."""
    up = Upstream(tmp_path / "upstream")
    made = synthesize(REPO / "recipes", "crictl", VERSIONS, up, arches=["x86-64"])
    url = {a.version: a.url for a in made.artifacts}
    mirror = MirrorServer(up.root)
    try:
        lock = {"crictl": {v: {"x86-64": {"sources": [{"url": url[v], "sha256": up.sha256[url[v]]}]}}
                           for v in VERSIONS}}
        (tmp_path / "bakery").mkdir()
        yield (Project(tmp_path / "bakery", mirror, lock),
               {v: "/" + u.removeprefix("https://") for v, u in url.items()})
    finally:
        for held in mirror.holds.values():
            held.set()
        mirror.close()


CRICTL_ENV = {"BAKERY_ARCH": "x86-64", "BAKERY_COMPRESSION": "gzip"}


@PARALLEL
def test_doit_n2_packs_an_image_while_the_next_download_runs(crictl, parallel) -> None:
    """The second download hangs: the job that fetched the first image stages and packs it
    before it starts the third download (doit's own order would fetch the third first)."""
    project, path = crictl
    mirror = project.mirror
    held = mirror.holds[path["1.35.0"]] = threading.Event()
    env = {**os.environ, "BAKERY_MIRROR": mirror.url, **CRICTL_ENV}
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
    assert proc.returncode == 0, out + err
    ran = executed(subprocess.CompletedProcess([], 0, out, err))
    first, third = "crictl-1.34.0-x86-64", "crictl-1.36.0-x86-64"
    assert ran.index(f"pack:{first}") < ran.index(f"fetch:{third}"), ran
    assert sorted(p.name for p in project.images.glob("*.raw")) == [
        f"crictl-{v}-x86-64.raw" for v in VERSIONS]
    assert [sum(1 for r in mirror.requests if r.startswith(p)) for p in path.values()] == [1, 1, 1]


def _temporary_names(project: Project) -> list[str]:
    build = project.root / "build"
    found = (*build.rglob(".*.tmp"), *build.glob("cache/.tmp/*"), *build.glob("stage/.*"))
    return sorted(str(p.relative_to(build)) for p in found if p.name != ".unpacked")


@PARALLEL
def test_doit_n2_c_with_a_failing_download_builds_the_rest_then_a_second_run_only_that_image(
        crictl, parallel) -> None:
    """`-c`: the 404 fails its image's fetch, its stage and pack never run, the other images
    are built, the run exits non-zero with nothing half-written; once upstream answers, the
    next run builds that image alone, and the one after finds everything up to date."""
    project, path = crictl
    project.mirror.failures[path["1.35.0"]] = 404
    first = project.doit(*parallel, "-c", "build", env=CRICTL_ENV, check=False)
    broken = "crictl-1.35.0-x86-64"
    assert first.returncode != 0, first.stdout + first.stderr
    assert f"TaskFailed - taskid:fetch:{broken}" in first.stdout
    assert f"UnmetDependency - taskid:pack:{broken}" in first.stdout
    assert sorted(executed(first)) == sorted(f"{kind}:crictl-{v}-x86-64" for v in VERSIONS
                                             for kind in ("fetch", "stage", "pack")
                                             if kind == "fetch" or v != "1.35.0")
    assert sorted(p.name for p in project.images.glob("*.raw")) == [
        "crictl-1.34.0-x86-64.raw", "crictl-1.36.0-x86-64.raw"]
    assert _temporary_names(project) == []
    del project.mirror.failures[path["1.35.0"]]
    second = project.doit(*parallel, "build", env=CRICTL_ENV)
    assert sorted(executed(second)) == [f"fetch:{broken}", f"pack:{broken}", f"stage:{broken}"]
    third = project.doit(*parallel, "build", env=CRICTL_ENV)
    assert executed(third) == []
    assert sum(line.startswith("-- ") for line in third.stdout.splitlines()) == 3 * len(VERSIONS)
    assert [sum(1 for r in project.mirror.requests if r.startswith(p)) for p in path.values()] == [1, 2, 1]


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


def test_doits_parallel_runners_still_make_their_queues_from_the_class_attribute() -> None:
    """ProcessRunner and ThreadRunner replace `Queue` (signal-safe feeders, a polling wait:
    schedule.py); doit's run_tasks must still call self.Queue() for both of its queues."""
    import inspect

    from doit.runner import MRunner, MThreadRunner
    source = inspect.getsource(MRunner.run_tasks)
    assert source.count("self.Queue()") == 2
    assert MThreadRunner.run_tasks is MRunner.run_tasks
    assert schedule.ProcessRunner.Queue is not MRunner.Queue
    assert schedule.ThreadRunner.Queue is not MThreadRunner.Queue
