"""How problems in the recipes and the lock reach the user: named once, at the end of a run.

A problem (a broken recipe, a refused pin) withholds images. The tasks that would have
built or published them — `build`, `release` and the recipe's own `build:` groups — fail
over it, but only after everything buildable was built: the check is their own action,
which doit runs after their task_dep. The texts ride in the task's `meta`, so the
reporter below names every problem of the run once after the last task, even when doit
stopped early at another failure or skipped the check (`-c` with a failed image). With
another `--reporter` the failing check's own message carries the same text.
`doit list` and the other commands that run no task print the problems when the tasks
are loaded, on stderr.

Warnings (an image built from a pin its recipe no longer renders, plan.stale_warning) ride
the same way, in the meta of the image's fetch task, and are printed at the end too, before
the problems; they fail nothing.
"""
from __future__ import annotations

import sys
from typing import Any, Iterable

from doit.exceptions import BaseFail, TaskFailed
from doit.reporter import ConsoleReporter

META = "bakery_problems"
WARNINGS = "bakery_warnings"   # images built despite something the user should fix
# doit's own commands besides `run` (doit_cmd.DoitMain.DOIT_CMDS): they load tasks, run none
NOT_RUN = {"help", "list", "info", "clean", "forget", "ignore", "dumpdb", "strace",
           "tabcompletion", "reset-dep"}
# options of doit's task loader that take a value and may come before the command
# (-k/--seek-file is a flag: taking `list` for its value made `doit --seek-file list` a run)
LOADER_VALUES = {"-f", "--file", "-d", "--dir"}


def render(problems: Iterable[str]) -> str:
    items = list(dict.fromkeys(problems))
    head = f"bakery: {len(items)} problem{'s' if len(items) != 1 else ''} withheld images:"
    return "\n".join([head, *(f"- {p}".replace("\n", "\n  ") for p in items)])


def check(problems: list[str]) -> TaskFailed | None:
    """The action of a task whose images (some of them) a problem withholds."""
    return TaskFailed(render(problems)) if problems else None


def runs_tasks(argv: list[str]) -> bool:
    """Whether doit will run tasks (its `run` command, explicit or implied), mirroring how
    doit picks the command: the first argument that is not a loader option."""
    args = iter(argv)
    for arg in args:
        if arg in LOADER_VALUES:
            next(args, None)
        elif not arg.startswith("-"):
            return arg not in NOT_RUN
    return True


# options that take the next argument as their value: doit's `run` options, and the string
# parameters of the tasks `selected_tasks` is asked about (plan, update)
RUN_VALUES = LOADER_VALUES | {"-n", "--process", "-P", "--parallel-type", "-r", "--reporter",
                              "-o", "--output-file", "-v", "--verbosity", "--backend",
                              "--db-file", "--check_file_uptodate", "--failure-verbosity",
                              "--from", "--repo", "--output", "--branch", "--author"}


def selected_tasks(argv: list[str]) -> list[str] | None:
    """The task names a `run` command line selects, or None when it runs none or names none
    (the default tasks). Reads like doit does: options and their values are skipped, and
    `key=value` is a task's positional argument. A command line it cannot read for sure only
    costs the shortcut taken on the answer (tasks.generate builds the whole graph)."""
    if not runs_tasks(argv):
        return None
    names: list[str] = []
    args = iter(argv)
    for arg in args:
        if arg.startswith("-"):
            if arg in RUN_VALUES:
                next(args, None)
        elif not names and arg == "run":
            continue
        elif "=" not in arg:
            names.append(arg)
    return names or None


def task_problems(task: Any, key: str = META) -> tuple[str, ...]:
    return tuple((task.meta or {}).get(key, ()))


class Reporter(ConsoleReporter):
    """doit's console output, plus the problems of the selected tasks once at the end; a
    run that touches none of them (`doit build:<other recipe>`) gets a one-line note."""
    desc = "console output; names the bakery's problems once at the end"

    def initialize(self, tasks: dict[str, Any], selected_tasks: list[str]) -> None:
        reached: dict[str, None] = {}
        todo = list(selected_tasks or ())
        while todo:
            name = todo.pop()
            if name in reached or name not in tasks:
                continue
            reached[name] = None
            todo.extend(tasks[name].task_dep)
        self.problems = list(dict.fromkeys(p for n in sorted(reached) for p in task_problems(tasks[n])))
        self.warnings = list(dict.fromkeys(w for n in sorted(reached)
                                           for w in task_problems(tasks[n], WARNINGS)))
        every = {p for t in tasks.values() for p in task_problems(t)}
        self.elsewhere = len(every - set(self.problems))

    def add_failure(self, task: Any, fail: BaseFail) -> None:
        if isinstance(fail, TaskFailed) and task_problems(task):
            return   # the check: its text is written once, by complete_run
        super().add_failure(task, fail)

    def complete_run(self) -> None:
        super().complete_run()
        sys.stdout.flush()
        for warning in self.warnings:
            print(f"bakery: {warning}", file=sys.stderr)
        if self.problems:
            print(render(self.problems), file=sys.stderr)
        elif self.elsewhere:
            print(f"bakery: note: {self.elsewhere} problem(s) in other recipes or the lock "
                  "(not part of this run); `doit list` names them", file=sys.stderr)
