"""The doit task factory: loading the graph must stay cheap (see docs/architecture.md)."""
from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import REPO
from sysext_bakery import report, tasks

HEAVY = ("requests", "urllib3", "tomlkit", "PySquashfsImage", "git", "zstandard", "yaml")


def test_graph_loads_without_the_heavy_modules() -> None:
    """Every `doit list` and no-op build imports tasks; what only actions need is imported
    inside them, so generating the graph for the repo's recipes pulls in none of these."""
    code = ("import sys; from pathlib import Path; from sysext_bakery import tasks; "
            f"list(tasks.generate(Path({str(REPO)!r}), [])); "
            f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, cwd=REPO)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == ""


@pytest.mark.parametrize("argv, selected", [
    (["plan", "--from", "build/release"], ["plan"]),
    (["--reporter=zero", "plan", "--from=pub", "--output", "m.json"], ["plan"]),
    (["-r", "zero", "run", "update", "--commit", "--branch", "bump"], ["update"]),
    (["-n", "2", "update:docker", "update:kubernetes"], ["update:docker", "update:kubernetes"]),
    (["build", "plan"], ["build", "plan"]),
    (["inspect", "docker-24.0.9-x86-64"], ["inspect", "docker-24.0.9-x86-64"]),
    # doit's own spellings: --seek-file (-k) takes no value, --db-file and
    # --failure-verbosity take one
    (["--seek-file", "plan"], ["plan"]),
    (["--db-file", "x.db", "--failure-verbosity", "2", "update"], ["update"]),
    (["-c"], None),                       # the default tasks
    (["list", "--all"], None),            # runs no task
    (["help", "plan"], None),
])
def test_selected_tasks_reads_the_command_line_like_doit(argv, selected) -> None:
    assert report.selected_tasks(argv) == selected


def task_names(argv: list[str]) -> set[str]:
    return {t["basename"] + (f":{t['name']}" if t.get("name") else "")
            for t in tasks.generate(REPO, argv)}


def test_update_and_plan_runs_skip_the_image_tasks() -> None:
    """The nightly job's `doit update` and `doit plan` load recipes, lock and plan but no
    per-image task: at a thousand images that was most of their time."""
    full = task_names(["build"])
    assert any(n.startswith("fetch:docker-") for n in full) and "build" in full
    for argv in (["update"], ["plan", "--from", "x"], ["update:docker"], ["update", "plan"]):
        names = task_names(argv)
        assert "update" in names and "plan" in names and "update:docker" in names
        assert not any(n.split(":")[0] in ("fetch", "stage", "pack", "build") for n in names), argv
    # anything else still gets the whole graph
    assert task_names(["plan", "build:docker"]) == full
    assert task_names(["list"]) == full


def test_seek_file_is_a_flag_so_list_stays_a_command_that_runs_no_task() -> None:
    from sysext_bakery.output import doit_command
    assert not report.runs_tasks(["--seek-file", "list"])
    assert doit_command(["--seek-file", "list"]) == "list"
