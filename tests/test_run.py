"""The one program runner: failures name the program, what it was for and what to install."""
from __future__ import annotations

import pytest

from sysext_bakery import run
from sysext_bakery.errors import BakeryError


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
