"""A stopped run leaves no program it started running (guarantee 1 of issue 13, docs/security.md):
under -P thread the stop unwinds the main thread only, so the worker waiting on mksquashfs
never kills it; the exiting main thread must."""
from __future__ import annotations

import lzma
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import Project, lock_for
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


@pytest.fixture
def slow_to_pack(tmp_path):
    """A project whose wasmtime x86-64 image takes mksquashfs seconds (incompressible MiBs, xz)."""
    up = populate(tmp_path / "upstream")
    top = "wasmtime-v29.0.1-x86_64-linux"
    members = [(f"{top}/", None, 0o755),
               (f"{top}/wasmtime", make_elf("x86-64", os.urandom(48 << 20)), 0o755)]
    up.add(wasmtime_url("x86-64", "29.0.1"),
           lzma.compress(tar_bytes(members, compress="none"), preset=0))
    mirror = MirrorServer(up.root)
    (tmp_path / "bakery").mkdir()
    yield Project(tmp_path / "bakery", mirror, {"wasmtime": lock_for(up)["wasmtime"]})
    mirror.close()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "Ctrl-C"])
def test_a_stop_mid_pack_under_threads_leaves_no_packer_running(slow_to_pack, signum):
    project = slow_to_pack
    env = {**os.environ, "BAKERY_MIRROR": project.mirror.url, "BAKERY_ARCH": "x86-64",
           "BAKERY_COMPRESSION": "xz"}
    proc = subprocess.Popen([sys.executable, "-m", "doit", "-n", "2", "-P", "thread",
                             "build:wasmtime"], cwd=project.root, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while "mksquashfs" not in _session(proc.pid).values():
            assert proc.poll() is None and time.monotonic() < deadline, "never reached packing"
            time.sleep(0.02)
        if signum == signal.SIGINT:
            os.killpg(proc.pid, signum)
        else:
            proc.send_signal(signum)
        out, err = proc.communicate(timeout=30)
        time.sleep(0.2)
        left = _session(proc.pid)
    finally:
        for pid in _session(proc.pid):
            os.kill(pid, signal.SIGKILL)
    assert proc.returncode == 128 + signum, out + err
    assert left == {}, f"still running after doit ended: {left}"
    assert "Traceback" not in out + err
    # the dropped worker's temporary image may stay: the next run removes it and says so
    again = project.doit("build:wasmtime", env={"BAKERY_ARCH": "x86-64", "BAKERY_COMPRESSION": "xz"})
    assert list(project.images.glob(".*.tmp")) == []
    assert (project.images / "wasmtime-29.0.1-x86-64.raw").is_file(), again.stderr
