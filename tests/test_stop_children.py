"""A stopped run leaves no program it started running and no temporary name in build/ (guarantee
1 of issue 13, docs/security.md): under -P thread the stop unwinds the main thread only, so the
worker waiting on mksquashfs or on a decompressor never kills it nor removes its image's
temporary name or its work directories; the exiting main thread must."""
from __future__ import annotations

import functools
import lzma
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import Project, lock_for
from sysext_bakery.build import tidy
from elf import make_elf
from upstream import MirrorServer, populate, tar_bytes, wasmtime_url


def _session(sid: int) -> dict[int, str]:
    """pid -> command name of the processes of session `sid`."""
    found = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            head, tail = stat.read_text().rsplit(")", 1)
        except OSError:
            continue
        if int(tail.split()[3]) == sid:
            found[int(stat.parent.name)] = head.split("(", 1)[1]
    return found


@functools.cache
def _slow_archive() -> bytes:
    """A wasmtime release of incompressible MiBs (made once: it takes seconds)."""
    top = "wasmtime-v29.0.1-x86_64-linux"
    members = [(f"{top}/", None, 0o755),
               (f"{top}/wasmtime", make_elf("x86-64", os.urandom(48 << 20)), 0o755)]
    return lzma.compress(tar_bytes(members, compress="none"), preset=0)


@pytest.fixture
def slow_to_pack(tmp_path):
    """A project whose wasmtime x86-64 image takes mksquashfs seconds (incompressible MiBs, xz)."""
    up = populate(tmp_path / "upstream")
    up.add(wasmtime_url("x86-64", "29.0.1"), _slow_archive())
    mirror = MirrorServer(up.root)
    (tmp_path / "bakery").mkdir()
    yield Project(tmp_path / "bakery", mirror, {"wasmtime": lock_for(up)["wasmtime"]})
    mirror.close()


HOLDER = """#!/bin/sh
# leaves a child of its own holding the program's output: killed, the program still does not
# end the worker's wait on it (as one hung in the kernel would not), so the worker never gets
# to its clean-up and only the stop can remove its temporary names
sleep 60 &
exec {real} "$@"
"""


def _holding_wrapper(bin_dir: Path, program: str) -> str:
    """A PATH with `program` wrapped by HOLDER in `bin_dir` first."""
    real = shutil.which(program)
    assert real, f"{program} is needed"
    bin_dir.mkdir()
    (bin_dir / program).write_text(HOLDER.format(real=real))
    (bin_dir / program).chmod(0o755)
    return f"{bin_dir}{os.pathsep}{os.environ['PATH']}"


THREADS = ["-n", "2", "-P", "thread"]


def _stopped_at(project: Project, program: str, signum: int, *, hold: bool = False,
                jobs: list[str] = THREADS):
    """Run a build of wasmtime (by default under -P thread), `program` wrapped by HOLDER, and stop it with
    `signum` once `program` runs (with `hold`, after freezing `program` with
    SIGSTOP: the step waiting on it stays mid-way while the test looks); the run's status, its
    output, the programs but HOLDER's still running after it ended, and the temporary names
    in build/ just before the stop."""
    env = {**os.environ, "BAKERY_MIRROR": project.mirror.url, "BAKERY_ARCH": "x86-64",
           "BAKERY_COMPRESSION": "xz",
           "PATH": _holding_wrapper(project.root.parent / "holding-bin", program)}
    proc = subprocess.Popen([sys.executable, "-m", "doit", *jobs, "build:wasmtime"], cwd=project.root, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while program not in (running := _session(proc.pid)).values():
            assert proc.poll() is None and time.monotonic() < deadline, f"never reached {program}"
            time.sleep(0.02)
        if hold:
            for pid, name in running.items():
                if name == program:
                    os.kill(pid, signal.SIGSTOP)
        before = tidy.stale_in_tree(project.root / "build")
        if signum == signal.SIGINT:
            os.killpg(proc.pid, signum)
        else:
            proc.send_signal(signum)
        out, err = proc.communicate(timeout=30)
        time.sleep(0.2)
        left = {pid: name for pid, name in _session(proc.pid).items() if name != "sleep"}
    finally:
        for pid in _session(proc.pid):
            os.kill(pid, signal.SIGKILL)
    return proc.returncode, out + err, left, before


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "Ctrl-C"])
def test_a_stop_mid_pack_under_threads_leaves_no_packer_running(slow_to_pack, signum):
    project = slow_to_pack
    status, output, left, before = _stopped_at(project, "mksquashfs", signum)
    assert status == 128 + signum, output
    assert left == {}, f"still running after doit ended: {left}"
    assert "Traceback" not in output
    # the packer is killed before the image's temporary name is removed, so nothing re-made it
    assert any(p.parent == project.images for p in before), before
    assert tidy.stale_in_tree(project.root / "build") == []
    again = project.doit("build:wasmtime", env={"BAKERY_ARCH": "x86-64", "BAKERY_COMPRESSION": "xz"})
    assert "a stopped run left behind" not in again.stderr
    assert (project.images / "wasmtime-29.0.1-x86-64.raw").is_file(), again.stderr


@pytest.mark.parametrize("jobs", [THREADS, [], ["-n", "2"]], ids=["-P thread", "serial", "-n 2"])
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "Ctrl-C"])
def test_a_stop_mid_stage_leaves_no_work_directory(slow_to_pack, signum, jobs):
    """Held in its decompressor, stage has its work directory (build/stage/.IMG.XXXX) and the
    unpacked cache's (build/stage/.unpacked/.<key>.XXXX) half filled: the stop removes both,
    under -P thread too, where the worker never gets to its own clean-up."""
    project = slow_to_pack
    status, output, left, before = _stopped_at(project, "xz", signum, hold=True, jobs=jobs)
    stage = project.root / "build/stage"
    assert {p.parent for p in before} == {stage, stage / ".unpacked"}, before
    assert status == 128 + signum, output
    assert left == {}, f"still running after doit ended: {left}"
    assert "Traceback" not in output
    assert tidy.stale_in_tree(project.root / "build") == []
    again = project.doit("build:wasmtime", env={"BAKERY_ARCH": "x86-64", "BAKERY_COMPRESSION": "xz"})
    assert "a stopped run left behind" not in again.stderr
    assert (project.images / "wasmtime-29.0.1-x86-64.raw").is_file(), again.stderr
