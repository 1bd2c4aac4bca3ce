"""Guarantee 7 of issue 13 (docs/security.md): two `doit` runs on one tree and two publishers on
one directory are refused clearly, and every rewrite of SHA256SUMS takes the same lock; plus
guarantee 8's "packing shows progress"."""
from __future__ import annotations

import contextlib
import json
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

from conftest import REPO
from sysext_bakery import run
from sysext_bakery.build import actions, sums, tidy
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


def _temporaries(build):
    """What a run in progress keeps in the tree and the download cache: temporary names, and
    the lock of a download (removed when it ends)."""
    cache = build / "cache"
    return [*(cache / ".tmp").iterdir(), *(cache / tidy.DOWNLOAD_LOCKS).iterdir(),
            *tidy.stale_in_tree(build)]


def _started(project, upstream, jobs):
    gated = GatedMirror(upstream.root)
    env = {**os.environ, "BAKERY_MIRROR": gated.url, "BAKERY_ARCH": "x86-64"}
    proc = subprocess.Popen([sys.executable, "-m", "doit", *jobs, "build:wasmtime"],
                            cwd=project.root, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    return gated, proc


def _stops_cleanly(project, gated, proc, signum, send) -> None:
    """`send()` the stop signal `signum` mid-download: the run ends soon with the shell's
    status for it, no traceback and no temporary name left."""
    try:
        send()
        stopped = time.monotonic()
        out, err = proc.communicate(timeout=60)
        took = time.monotonic() - stopped
        left = _temporaries(project.root / "build")
    finally:
        gated.close()
    assert proc.returncode == 128 + signum, out + err
    assert took < 15, f"the run took {took:.0f} s to stop: it waited for the download"
    assert left == []
    assert "Traceback" not in out + err


STOP_MASK = (1 << (signal.SIGINT - 1)) | (1 << (signal.SIGTERM - 1))   # as in SigBlk


@pytest.mark.parametrize("jobs", [[], ["-n", "2"], ["-n", "2", "-P", "thread"]],
                         ids=["serial", "-n 2", "-P thread"])
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "Ctrl-C"])
def test_a_signal_mid_download_removes_the_temporary_file(project, upstream, signum, jobs):
    """Guarantee 1's "SIGTERM and Ctrl-C remove the temporary file", for a real doit run,
    ending with the shell's status for the signal and no traceback. Ctrl-C reaches the whole
    process group (doit -n's children too); SIGTERM only doit. Under -n, doit terminates its
    children as it unwinds, so a downloading child gets Ctrl-C and then SIGTERM: the second
    must not cut its clean-up short. Under -P thread the download runs
    in a worker thread the interpreter drops as it exits: the run must neither wait for it
    (the mirror holds it for a minute) nor leave its file or its lock behind."""
    gated, proc = _started(project, upstream, jobs)
    tmp = project.root / "build/cache/.tmp"
    assert gated.asked.wait(60), "the build never reached its download"
    assert [p.name for p in tmp.iterdir()], "no temporary download to remove"
    _stops_cleanly(project, gated, proc, signum,
                   lambda: os.killpg(proc.pid, signum) if signum == signal.SIGINT
                   else proc.send_signal(signum))


STOP_SCENARIO = """
import json, os, sys, threading
from pathlib import Path
from sysext_bakery import files

here = Path(sys.argv[1])
made, ended, go_on = threading.Event(), threading.Event(), threading.Event()
seen = {"refused": False}

def worker():
    _, held = files.make_temp_file(dir=here, prefix="held.")
    _, moved = files.make_temp_file(dir=here, prefix="moved.")
    os.replace(moved, here / "final")
    files.forget(moved)
    tree = files.make_temp_dir(dir=here, prefix="tree.")      # a stage work directory
    os.makedirs(Path(tree) / "usr/bin")
    (Path(tree) / "usr/bin/tool").write_text("half staged")
    placed = files.make_temp_dir(dir=here, prefix="placed.")
    os.rename(placed, here / "staged")
    files.forget(placed)
    seen.update(held=Path(held).name, moved=Path(moved).name, tree=Path(tree).name)
    made.set()
    go_on.wait(10)
    Path(held).write_text("another process's new file of that name")
    files.discard(held)              # the stop removed this thread's file first
    try:
        files.make_temp_file(dir=here, prefix="late.")
    except SystemExit:
        seen["refused"] = True
    ended.set()

threading.Thread(target=worker, daemon=True).start()
made.wait(10)
(here / seen["moved"]).write_text("a new file where the renamed one was")
seen["removed"] = [Path(name).name for name in files.remove_temporaries()]
go_on.set()
ended.wait(10)
seen["left"] = sorted(p.name for p in here.iterdir())
print(json.dumps(seen))
"""


def test_a_stop_removes_the_names_threads_still_hold_and_nothing_else(tmp_path):
    """files.remove_temporaries, as a stopped -P thread run calls it: it removes what a worker
    still holds (a directory with all it holds), not a name renamed into place (`forget`); the worker's own later discard
    leaves a new file of that name alone (one of them removes it, never both), and nothing is
    made once the stop began."""
    done = subprocess.run([sys.executable, "-c", STOP_SCENARIO, str(tmp_path)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    assert seen["removed"] == [seen["held"], seen["tree"]]
    assert seen["refused"], "a temporary file was made after the stop"
    assert seen["left"] == sorted(["final", "staged", seen["held"], seen["moved"]])


def _child_of(pid: int) -> int:
    """The one child process of `pid`."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        if children:
            return int(children[0])
        time.sleep(0.01)
    raise AssertionError(f"process {pid} started no child")


def _session(sid: int) -> list[int]:
    """The processes of session `sid` (the test starts doit in a session of its own)."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            if int(stat.read_text().rsplit(")", 1)[1].split()[3]) == sid:
                pids.append(int(stat.parent.name))
    return pids


def _threads(pids: list[int]) -> dict[str, int]:
    """The threads of `pids` other than their main ones ("pid/tid") and the signals each
    blocks (a mask: bit n-1 for signal n); a thread or process that ends meanwhile is left
    out."""
    found = {}
    for pid in pids:
        with contextlib.suppress(OSError):
            for task in Path(f"/proc/{pid}/task").iterdir():
                if int(task.name) == pid:
                    continue
                with contextlib.suppress(OSError):
                    status = (task / "status").read_text()
                    found[f"{pid}/{task.name}"] = int(
                        re.search(r"^SigBlk:\s*([0-9a-f]+)$", status, re.M).group(1), 16)
    return found


def test_only_main_threads_of_doit_n_take_the_stop_signals(project, upstream):
    """The kernel gives a signal sent to a process to any thread not blocking it, and Python
    handles it in the main thread only: a -n child's main thread waiting in a download would
    miss a Ctrl-C its queue's feeder thread took, and run on until the read timed out."""
    gated, proc = _started(project, upstream, ["-n", "2"])
    try:
        assert gated.asked.wait(60), "the build never reached its download"
        threads = _threads(_session(proc.pid))
    finally:
        gated.gate.set()
        out, err = proc.communicate(timeout=120)
        gated.close()
    assert threads, "no thread besides the main ones: nothing was checked"
    assert [t for t, blocked in threads.items() if blocked & STOP_MASK != STOP_MASK] == [], \
        threads
    assert proc.returncode == 0, out + err


def test_a_stop_signal_a_worker_thread_took_still_stops_a_thread_run(project, upstream):
    """Under -P thread the workers start programs, so they keep the stop signals open (a
    blocked mask is inherited across exec); the main thread must see a signal the kernel gave
    to a worker all the same. kill(2) with a thread's id offers the signal to that thread
    first."""
    gated, proc = _started(project, upstream, ["-n", "2", "-P", "thread"])
    assert gated.asked.wait(60), "the build never reached its download"
    workers = _threads([proc.pid])
    assert workers, "no worker thread"
    assert [t for t, blocked in workers.items() if blocked & STOP_MASK] == [], \
        "workers block the stop signals: the programs they start would too"
    worker = int(next(iter(workers)).split("/")[1])
    _stops_cleanly(project, gated, proc, signal.SIGTERM,
                   lambda: os.kill(worker, signal.SIGTERM))


SECOND_SIGNAL = """
import atexit, os, sys, time
from sysext_bakery.build import tidy

tidy.exit_on_signals()
if sys.argv[1] == "child":
    pid = os.fork()           # as doit -n does: the handlers are inherited
    if pid:
        os.waitpid(pid, 0)    # the parent: killed by the test once the child has reported
        os._exit(0)


def wait_for_children():      # as multiprocessing joins doit -n's children at exit
    print("waiting", flush=True)
    time.sleep(1.5)
    print("clean-up done", flush=True)


try:
    print("ready", flush=True)
    time.sleep(30)
except BaseException as stopping:
    print("stopping", type(stopping).__name__, flush=True)
    if sys.argv[1] == "child":
        wait_for_children()   # a clean-up that takes a while; the second signal comes now
        os._exit(3)           # doit's child reports to doit instead
    atexit.register(wait_for_children)
    raise
"""


@pytest.mark.parametrize("who", ["doit", "child"])
def test_a_second_stop_signal(tmp_path, who):
    """doit, already stopping, ends at once on a second signal (a user's second Ctrl-C while
    it waits for its children), with the status for that signal and no atexit traceback;
    a -n child ignores it and finishes its clean-up (doit's own SIGTERM after Ctrl-C)."""
    script = tmp_path / "second.py"
    script.write_text(SECOND_SIGNAL)
    proc = subprocess.Popen([sys.executable, str(script), who], cwd=REPO, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.stdout.readline() == "ready\n"
    target = proc.pid if who == "doit" else _child_of(proc.pid)
    os.kill(target, signal.SIGINT)
    assert proc.stdout.readline().startswith("stopping")
    assert proc.stdout.readline() == "waiting\n"
    os.kill(target, signal.SIGTERM)
    if who == "doit":
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == 128 + signal.SIGTERM
        assert "clean-up done" not in out
    else:
        assert proc.stdout.readline() == "clean-up done\n"
        out, err = proc.communicate(timeout=30)
    assert "Traceback" not in err, err


RENAMED_TREE = """
import os, sys
from pathlib import Path
from sysext_bakery import files

here = Path(sys.argv[1])
work = Path(files.make_temp_dir(dir=here, prefix=".work."))
(work / "usr").mkdir()
(work / "usr/tool").write_text("built")
files.rename_kept(work, here / "entry")
print(sorted(files.remove_temporaries()))
"""


def test_a_tree_renamed_into_place_is_out_of_the_stops_reach(tmp_path):
    """rename_kept renames and forgets as one step: the stop's removal, had it come between
    the two, would have emptied the tree now in place."""
    script = tmp_path / "renamed.py"
    script.write_text(RENAMED_TREE)
    done = subprocess.run([sys.executable, str(script), str(tmp_path)], cwd=REPO, text=True,
                          capture_output=True, env={**os.environ, "PYTHONPATH": str(REPO)},
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "[]\n"
    assert (tmp_path / "entry/usr/tool").read_text() == "built"
