"""The one program runner: failures name the program, what it was for and what to install."""
from __future__ import annotations

import os
import subprocess
import threading

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


def _in_thread(target) -> tuple[threading.Thread, list[BaseException]]:
    errors: list[BaseException] = []

    def body():
        try:
            target()
        except BaseException as e:   # handed to the test's thread, which asserts on it
            errors.append(e)
    thread = threading.Thread(target=body, daemon=True)
    thread.start()
    return thread, errors


def test_overlapping_withheld_sections_keep_the_secrets_out_until_the_last_ends(monkeypatch):
    """doit -P thread: two update or release tasks in GitPython at once. The first out must
    not put the secrets back while the second one's git still runs."""
    for name, value in SECRET_VALUES.items():
        monkeypatch.setenv(name, value)
    first_in, second_in, first_out = threading.Event(), threading.Event(), threading.Event()

    def first():
        with run.secrets_withheld():
            first_in.set()
            assert second_in.wait(30)
        first_out.set()
    thread, errors = _in_thread(first)
    assert first_in.wait(30)
    with run.secrets_withheld():
        second_in.set()
        assert first_out.wait(30)
        assert not [name for name in SECRETS if name in os.environ]
    thread.join(30)
    assert not errors
    assert {name: os.environ.get(name) for name in SECRETS} == SECRET_VALUES


def test_withheld_sections_in_many_threads_never_let_a_secret_through(monkeypatch):
    for name, value in SECRET_VALUES.items():
        monkeypatch.setenv(name, value)
    seen: list[str] = []
    start = threading.Barrier(8)

    def work():
        start.wait(30)
        for _ in range(300):
            with run.secrets_withheld():
                seen.extend(name for name in SECRETS if name in os.environ)
    threads = [_in_thread(work) for _ in range(8)]
    for thread, errors in threads:
        thread.join(60)
        assert not errors
    assert not seen
    assert {name: os.environ.get(name) for name in SECRETS} == SECRET_VALUES


def test_a_child_that_names_a_secret_gets_it_while_another_thread_withholds(monkeypatch):
    """run builds each child's environment itself: git's section in another thread neither
    leaks a secret to a child that did not ask nor takes it from one that did."""
    for name, value in SECRET_VALUES.items():
        monkeypatch.setenv(name, value)
    inside, done = threading.Event(), threading.Event()
    git_saw: list[bytes] = []

    def git_like():
        with run.secrets_withheld():
            # what GitPython does: a plain Popen with the whole process environment
            git_saw.append(subprocess.run(["env"], capture_output=True, check=True).stdout)
            inside.set()
            assert done.wait(30)
    thread, errors = _in_thread(git_like)
    assert inside.wait(30)
    try:
        seen = shown(run.run(["sh", "-c", SHOW], what="showing", secrets=("GITHUB_TOKEN",)).stdout)
        assert seen["GITHUB_TOKEN"] == SECRET_VALUES["GITHUB_TOKEN"]
        assert seen["BAKERY_SIGNING_KEY"] == "unset"
        env = run.environ(GNUPGHOME="/nowhere")
        seen = shown(run.run(["sh", "-c", SHOW], what="showing", env=env,
                             secrets=("BAKERY_SIGNING_PASSPHRASE",)).stdout)
        assert seen["BAKERY_SIGNING_PASSPHRASE"] == SECRET_VALUES["BAKERY_SIGNING_PASSPHRASE"]
        # what reads a token (discovery, GitHub digests, publishing) still finds it
        assert run.environment()["GITHUB_TOKEN"] == SECRET_VALUES["GITHUB_TOKEN"]
    finally:
        done.set()
        thread.join(30)
    assert not errors
    assert not any(value.encode() in git_saw[0] for value in SECRET_VALUES.values())
