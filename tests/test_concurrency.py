"""Guarantee 7 of issue 13 (docs/security.md): two `doit` runs on one tree and two publishers on
one directory are refused clearly, and every rewrite of SHA256SUMS takes the same lock; plus
guarantee 8's "packing shows progress"."""
from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import pytest

from sysext_bakery import run
from sysext_bakery.build import actions, sums
from sysext_bakery.errors import BakeryError
from sysext_bakery.publish import directory
from sysext_bakery.settings import settings_from_env


class GatedMirror:
    """Serves the upstream tree, but holds every request until `gate` is set: a build that
    stays in its fetch step for as long as the test needs."""

    def __init__(self, root):
        self.gate, self.asked = threading.Event(), threading.Event()
        gate, asked = self.gate, self.asked

        class Handler(SimpleHTTPRequestHandler):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, directory=str(root), **kwargs)

            def do_GET(self):
                asked.set()
                gate.wait(60)
                super().do_GET()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.gate.set()
        self.server.shutdown()
        self.server.server_close()


def test_a_second_doit_run_on_a_tree_is_refused_while_the_first_runs(project, upstream):
    gated = GatedMirror(upstream.root)
    env = {**os.environ, "BAKERY_MIRROR": gated.url, "BAKERY_ARCH": "x86-64"}
    first = subprocess.Popen([sys.executable, "-m", "doit", "build:wasmtime"], cwd=project.root,
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert gated.asked.wait(60), "the first build never reached its download"
        second = project.doit("build:docker-24", check=False)
        listing = project.doit("list")        # reading the graph never waits for a build
    finally:
        gated.gate.set()
        out, err = first.communicate(timeout=120)
        gated.close()
    assert first.returncode == 0, out + err
    assert second.returncode != 0
    assert f"{project.root / 'build/.lock'} is locked: another doit run (pid {first.pid})" \
        in second.stderr
    assert "Traceback" not in second.stderr + second.stdout
    assert "build:docker-24" in listing.stdout
    assert project.doit("build:wasmtime").returncode == 0   # the lock went with its run


def test_a_second_publisher_on_a_directory_is_refused(project, tmp_path):
    project.doit("build:wasmtime", env={"BAKERY_ARCH": "x86-64"})
    dest = tmp_path / "pub"
    dest.mkdir()
    with directory.locked(dest):                 # the first publisher, mid-way
        done = project.doit("release", "--dest", str(dest), check=False)
    assert done.returncode != 0
    assert f"{dest / directory.LOCK} is locked: another publisher is writing {dest}" in done.stdout
    assert "Traceback" not in done.stdout + done.stderr
    assert [p.name for p in dest.iterdir()] == [directory.LOCK]
    project.doit("release", "--dest", str(dest))
    assert (dest / "SHA256SUMS").is_file()


def _writers(root):
    settings = settings_from_env(root, {})
    images = settings.images
    return {"pack (sums.update)": lambda: sums.update(images, {"a-1-x86-64.raw": "0" * 64}),
            "doit sums": lambda: actions.write_sums(settings),
            "doit release": lambda: directory._write_manifest(images, b"new manifest\n", None)}


@pytest.mark.parametrize("writer", ["pack (sums.update)", "doit sums", "doit release"])
def test_every_sha256sums_rewrite_waits_for_the_lock(tmp_path, writer):
    images = tmp_path / "build/images"
    images.mkdir(parents=True)
    (images / "a-1-x86-64.raw").write_bytes(b"image")
    manifest = images / "SHA256SUMS"
    stale = f"{'1' * 64}  a-1-x86-64.raw\n"
    manifest.write_text(stale)
    thread = threading.Thread(target=_writers(tmp_path)[writer])
    with sums.locked(images):
        thread.start()
        thread.join(0.5)
        assert thread.is_alive(), f"{writer} rewrote SHA256SUMS without the lock"
        assert manifest.read_text() == stale
    thread.join(10)
    assert not thread.is_alive()
    assert manifest.read_text() != stale


def test_packing_announces_itself_without_a_terminal(project):
    done = project.doit("build:wasmtime", env={"BAKERY_ARCH": "x86-64"})
    assert f"packing {project.images / 'wasmtime-29.0.1-x86-64.raw'} …" in done.stderr


def test_a_long_job_reports_its_time_and_keeps_the_tools_last_words(monkeypatch, capsys):
    monkeypatch.setattr(run, "PROGRESS_EVERY", 0.2)
    started = time.monotonic()
    with pytest.raises(BakeryError) as failed:
        run.run(["sh", "-c", "echo boom >&2; sleep 0.7; exit 1"], what="packing x.raw",
                progress=True)
    assert time.monotonic() - started < 5
    assert "boom" in str(failed.value) and "exit 1" in str(failed.value)
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == "packing x.raw …"
    assert any(line.startswith("packing x.raw: ") and line.endswith(" s") for line in lines[1:])


@pytest.mark.parametrize("jobs", [[], ["-n", "2"]], ids=["serial", "-n 2"])
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "Ctrl-C"])
def test_a_signal_mid_download_removes_the_temporary_file(project, upstream, signum, jobs):
    """Guarantee 1's "SIGTERM and Ctrl-C remove the temporary file", for a real doit run,
    ending with the shell's status for the signal and no traceback. Ctrl-C reaches the whole
    process group (doit -n's children too); SIGTERM only doit. Under -n, doit terminates its
    children as it unwinds, so a downloading child gets Ctrl-C and then SIGTERM: the second
    must not cut its clean-up short."""
    gated = GatedMirror(upstream.root)
    env = {**os.environ, "BAKERY_MIRROR": gated.url, "BAKERY_ARCH": "x86-64"}
    proc = subprocess.Popen([sys.executable, "-m", "doit", *jobs, "build:wasmtime"],
                            cwd=project.root, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    tmp = project.root / "build/cache/.tmp"
    try:
        assert gated.asked.wait(60), "the build never reached its download"
        assert [p.name for p in tmp.iterdir()], "no temporary download to remove"
        if signum == signal.SIGINT:
            os.killpg(proc.pid, signum)
        else:
            proc.send_signal(signum)
        out, err = proc.communicate(timeout=60)
        left = list(tmp.iterdir())
    finally:
        gated.close()
    assert proc.returncode == 128 + signum, out + err
    assert left == []
    assert "Traceback" not in out + err


def _session(sid: int) -> list[int]:
    """The processes of session `sid` (the test starts doit in a session of its own)."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            if int(stat.read_text().rsplit(")", 1)[1].split()[3]) == sid:
                pids.append(int(stat.parent.name))
    return pids


def _threads_open_to(signals: set[int], pids: list[int]) -> tuple[list[str], list[str]]:
    """The threads of `pids` other than their main ones: all of them, and those that do not
    block every one of `signals` (as "pid/tid")."""
    others, open_ = [], []
    for pid in pids:
        for task in Path(f"/proc/{pid}/task").iterdir():
            if int(task.name) == pid:
                continue
            others.append(f"{pid}/{task.name}")
            blocked = int(re.search(r"^SigBlk:\s*([0-9a-f]+)$", (task / "status").read_text(),
                                    re.M).group(1), 16)
            if any(not blocked & (1 << (s - 1)) for s in signals):
                open_.append(f"{pid}/{task.name}")
    return others, open_


@pytest.mark.parametrize("jobs", [["-n", "2"], ["-n", "2", "-P", "thread"]],
                         ids=["processes", "threads"])
def test_only_main_threads_take_the_stop_signals(project, upstream, jobs):
    """The kernel gives a signal sent to a process to any thread not blocking it, and Python
    handles it in the main thread only: a main thread waiting in a download would miss a
    Ctrl-C that, say, a queue's feeder thread took, and run on until the read timed out."""
    gated = GatedMirror(upstream.root)
    env = {**os.environ, "BAKERY_MIRROR": gated.url, "BAKERY_ARCH": "x86-64"}
    proc = subprocess.Popen([sys.executable, "-m", "doit", *jobs, "build:wasmtime"],
                            cwd=project.root, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert gated.asked.wait(60), "the build never reached its download"
        others, open_ = _threads_open_to({signal.SIGINT, signal.SIGTERM}, _session(proc.pid))
    finally:
        gated.gate.set()
        out, err = proc.communicate(timeout=120)
        gated.close()
    assert others, "no thread besides the main ones: nothing was checked"
    assert open_ == [], f"threads that would take Ctrl-C or SIGTERM: {open_} of {others}"
    assert proc.returncode == 0, out + err
