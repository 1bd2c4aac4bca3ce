"""The one program runner: failures name the program, what it was for and what to install."""
from __future__ import annotations

import pytest

from sysext_bakery import run
from sysext_bakery.errors import BakeryError
from sysext_bakery.settings import SECRETS


def test_output_and_status():
    done = run.run(["sh", "-c", "printf out; printf err >&2; exit 3"], what="probing", check=False)
    assert (done.returncode, done.stdout, done.stderr) == (3, b"out", b"err")


def test_a_failure_names_the_purpose_the_program_and_its_last_words():
    with pytest.raises(BakeryError) as err:
        run.run(["sh", "-c", "echo something broke >&2; exit 2"], what="packing x.raw")
    assert err.value.message == "packing x.raw: sh failed (exit 2): something broke"


def test_a_missing_program_says_which_package_installs_it():
    with pytest.raises(BakeryError) as err:
        run.run(["/nonexistent/mksquashfs", "x"], what="packing x.raw")
    assert "mksquashfs: command not found" in str(err.value)
    assert "apt-get install squashfs-tools" in err.value.hint
    with pytest.raises(BakeryError) as err:
        run.require("mkfs.erofs-not-here")
    assert "command not found" in str(err.value)


def test_every_wait_is_bounded():
    with pytest.raises(BakeryError) as err:
        run.run(["sleep", "30"], what="waiting", timeout=0.2)
    assert "sleep did not finish within 0 s" in str(err.value)


def test_spawned_children_are_reaped():
    proc = run.spawn(["sleep", "30"], what="streaming")
    assert run.kill(proc) is not None and proc.returncode is not None


SECRET_VALUES = {name: f"distinctive-{name.lower()}-value-4711" for name in SECRETS}
SHOW = 'for v in ' + " ".join(SECRETS) + '; do eval "echo $v=\\${$v-unset}"; done; echo OTHER=$OTHER'


def shown(output: bytes) -> dict[str, str]:
    return dict(line.split("=", 1) for line in output.decode().splitlines())


def test_no_child_inherits_a_secret(monkeypatch):
    for name, value in SECRET_VALUES.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("OTHER", "kept")
    everything_else = {**{name: "unset" for name in SECRETS}, "OTHER": "kept"}
    # the process environment, one built by run.environ, and one spelled out by the caller
    for env in (None, run.environ(GNUPGHOME="/nowhere"), {**SECRET_VALUES, "OTHER": "kept"}):
        assert shown(run.run(["sh", "-c", SHOW], what="showing", env=env).stdout) == everything_else
        proc = run.spawn(["sh", "-c", SHOW], what="showing", env=env)
        out, _ = proc.communicate(timeout=30)
        assert shown(out) == everything_else
    listed = run.run(["env"], what="listing").stdout
    assert not any(value.encode() in listed for value in SECRET_VALUES.values())


def test_a_child_that_needs_a_secret_names_it(monkeypatch):
    for name, value in SECRET_VALUES.items():
        monkeypatch.setenv(name, value)
    seen = shown(run.run(["sh", "-c", SHOW], what="showing", secrets=("GITHUB_TOKEN",)).stdout)
    assert seen["GITHUB_TOKEN"] == SECRET_VALUES["GITHUB_TOKEN"]
    assert seen["BAKERY_SIGNING_KEY"] == seen["BAKERY_SIGNING_PASSPHRASE"] == "unset"
    with pytest.raises(ValueError, match="GITHUB_TOKN"):   # a typo is no silent opt-in
        run.run(["true"], what="probing", secrets=("GITHUB_TOKN",))
