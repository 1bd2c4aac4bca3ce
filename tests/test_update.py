"""`doit update` end to end: recorded upstream-shaped answers and artifacts served on loopback
through BAKERY_MIRROR, the real doit CLI, the real lock file and, for --commit, a real git
repository driven with GitPython."""
from __future__ import annotations

import hashlib
import signal
import threading
import tomllib
from pathlib import Path
from types import SimpleNamespace

import git
import pytest
import tomli_w

import tracking
from conftest import Project, lock_for
from sysext_bakery.recipe import lock as lockmod
from sysext_bakery.update import run as update_run
from upstream import MirrorServer, Upstream, docker_url, populate, runc_url, GO_ARCH
from elf import make_elf

VERSIONS = '''# what to carry (test copy)
[docker]
streams = 2

[containerd]
streams = 2

[wasmtime]
versions = ["latest"]
'''


@pytest.fixture
def world(tmp_path: Path):
    """A fresh upstream per test (tests add releases to it) with its own loopback server, and
    a project pinning what the shared test lock pins; upstream offers exactly that."""
    up = populate(tmp_path / "upstream")
    tracking.docker_index(up, ["18.09.0", "24.0.8", "24.0.9", "25.0.0"])
    tracking.github_releases(up, "containerd/containerd", ["v1.7.27", "v1.7.26"])
    tracking.github_releases(up, "bytecodealliance/wasmtime", ["v29.0.1", "v29.0.0"])
    server = MirrorServer(up.root)
    root = tmp_path / "bakery"
    root.mkdir()
    project = Project(root, server, world_lock(up))
    (root / "release" / "versions.toml").write_text(VERSIONS)
    yield project, up, server
    server.close()


def world_lock(up: Upstream) -> dict:
    """The test lock as the desired state leaves it: docker 24.0.8 is not the newest 24."""
    lock = lock_for(up)
    del lock["docker"]["24.0.8"]
    return lock


def pins(project: Project) -> dict:
    return tomllib.loads(project.lock_path.read_text())


def test_nothing_new_changes_nothing(world) -> None:
    project, up, server = world
    before = project.lock_path.read_text()
    proc = project.doit("update")
    assert project.lock_path.read_text() == before
    assert "release/lock.toml: unchanged (0 recipe(s) changed, 0 failed)" in proc.stdout
    for name in ("docker", "containerd", "wasmtime"):
        assert f"{name}: up to date" in proc.stdout
    # discovery only: three answers, no artifact or checksum file
    assert sorted(server.requests) == [
        "/api.github.com/repos/bytecodealliance/wasmtime/releases?per_page=100",
        "/api.github.com/repos/containerd/containerd/releases?per_page=100",
        "/download.docker.com/linux/static/stable/x86_64/"]


def test_new_docker_patch_is_pinned_with_each_arch_sha256(world) -> None:
    project, up, server = world
    tracking.docker_release(up, "25.0.1")
    tracking.docker_index(up, ["24.0.8", "24.0.9", "25.0.0", "25.0.1"])
    server.requests.clear()
    proc = project.doit("update:docker")
    lock = pins(project)
    for arch in ("x86-64", "arm64"):
        url = docker_url(arch, "25.0.1")
        served = (up.root / url.removeprefix("https://")).read_bytes()
        assert lock["docker"]["25.0.1"][arch]["sources"] == [
            {"url": url, "sha256": hashlib.sha256(served).hexdigest()}]
        # hashed at update time into the build cache: the build downloads nothing again
        assert (project.root / "build" / "cache" / hashlib.sha256(served).hexdigest()).is_file()
    # retention: the newest of each of the 2 newest majors stays, the older patches go
    assert sorted(lock["docker"]) == ["24.0.9", "25.0.1"]
    assert "docker: pinned 25.0.1 (x86-64, arm64; sha256 by download (trust on first use" in proc.stdout
    assert "docker: dropped 25.0.0 (retention: keep-per-stream = 1)" in proc.stdout
    assert f"trust on first use: {docker_url('x86-64', '25.0.1')} sha256" in proc.stdout
    assert "containerd" not in proc.stdout                   # update:docker touches docker only
    # the lock's other recipes are untouched
    assert lock["containerd"] == lock_for(up)["containerd"]
    assert not any("containerd" in r or "wasmtime" in r for r in server.requests)
    # a second run finds nothing to do and asks upstream only for the index
    server.requests.clear()
    again = project.doit("update:docker")
    assert "docker: up to date" in again.stdout and "release/lock.toml: unchanged" in again.stdout
    assert server.requests == ["/download.docker.com/linux/static/stable/x86_64/"]


def test_new_kubernetes_minor_adds_a_stream_and_drops_the_oldest(world) -> None:
    project, up, server = world
    (project.root / "recipes" / "kubernetes.toml").write_text(tracking.KUBERNETES_RECIPE)
    (project.root / "release" / "versions.toml").write_text(
        VERSIONS + "\n[kubernetes]\nstreams = 3    # the supported minors\n")
    tracking.kubernetes(up, ["v1.30.10", "v1.31.6", "v1.32.2", "v1.33.0"], new_minor="1.33.0")
    lock = world_lock(up)
    lock["kubernetes"] = {v: {a: tracking.pinned_sources(up, tracking.kubectl_url(v, a))
                              for a in tracking.ARCHES} for v in ("v1.30.10", "v1.31.6", "v1.32.2")}
    project.write_lock(lock)
    proc = project.doit("update:kubernetes")
    got = pins(project)["kubernetes"]
    assert sorted(got) == ["v1.31.6", "v1.32.2", "v1.33.0"]
    for arch in tracking.ARCHES:
        url = tracking.kubectl_url("v1.33.0", arch)
        assert got["v1.33.0"][arch]["sources"] == [{"url": url, "sha256": up.sha256[url]}]
    assert "kubernetes: pinned v1.33.0 (x86-64, arm64; sha256 from upstream's checksum files)" in proc.stdout
    assert ("kubernetes: dropped v1.30.10 (retention: keep-streams = 3: stream v1.30 is not "
            "among the newest)") in proc.stdout
    assert "trust on first use" not in proc.stdout           # every sha256 came from upstream


def test_a_failing_upstream_does_not_lose_the_others(world) -> None:
    project, up, server = world
    tracking.docker_release(up, "25.0.1")
    tracking.docker_index(up, ["24.0.9", "25.0.0", "25.0.1"])
    server.failures["/api.github.com/repos/bytecodealliance/wasmtime/releases"] = 500
    before = pins(project)
    proc = project.doit("update", env={"BAKERY_FETCH_BACKOFF": "0.01"}, check=False)
    assert proc.returncode != 0
    # asked again (transient statuses are retried) before the recipe was given up
    assert server.requests.count("/api.github.com/repos/bytecodealliance/wasmtime/releases"
                                 "?per_page=100") > 1
    lock = pins(project)
    assert "25.0.1" in lock["docker"]                        # written despite the failure
    assert lock["wasmtime"] == before["wasmtime"]             # the failed recipe is untouched
    assert lock["containerd"] == before["containerd"]
    assert "wasmtime: FAILED: https://api.github.com/repos/bytecodealliance/wasmtime/releases" \
           "?per_page=100: HTTP 500" in proc.stdout
    assert "containerd: up to date" in proc.stdout
    assert "update was partial: 1 of 3 recipe(s) failed (wasmtime)" in proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr


def test_edited_companion_version_repins_and_says_so(world) -> None:
    project, up, server = world
    recipe = project.root / "recipes" / "containerd.toml"
    recipe.write_text(recipe.read_text().replace('version = "1.2.5"', 'version = "1.2.6"'))
    sums = []
    for arch in tracking.ARCHES:
        digest = up.add(runc_url(arch, "1.2.6"), make_elf(arch, b"runc 1.2.6" * 90))
        sums.append(f"{digest}  runc.{GO_ARCH[arch]}\n")
    up.add(runc_url("x86-64", "1.2.6").rsplit("/", 1)[0] + "/runc.sha256sum", "".join(sums).encode())
    proc = project.doit("update:containerd")
    got = pins(project)["containerd"]["1.7.27"]
    for arch in tracking.ARCHES:
        assert got[arch]["sources"][1] == {"url": runc_url(arch, "1.2.6"),
                                           "sha256": up.sha256[runc_url(arch, "1.2.6")]}
        assert got[arch]["sources"][0] == lock_for(up)["containerd"]["1.7.27"][arch]["sources"][0]
    assert (f"containerd: re-pinned 1.7.27: recipes/containerd.toml changed (x86-64: "
            f"{runc_url('x86-64')} -> {runc_url('x86-64', '1.2.6')})") in proc.stdout
    # and the build now uses the new runc (the pinned URL no longer wins silently)
    project.doit("fetch:containerd-1.7.27-arm64")
    assert f"/{runc_url('arm64', '1.2.6').removeprefix('https://')}" in server.requests


def test_hand_pinned_version_gets_its_sha256(world) -> None:
    project, up, server = world
    lock = world_lock(up)
    lock["wasmtime"] = {"29.0.1": {}}
    project.write_lock(lock)
    assert pins(project)["wasmtime"] == {"29.0.1": {}}
    proc = project.doit("update:wasmtime")
    got = pins(project)["wasmtime"]["29.0.1"]
    assert set(got) == {"x86-64", "arm64"}
    assert "wasmtime: re-pinned 29.0.1: x86-64 has no sha256 pinned yet" in proc.stdout


def test_a_hand_pin_once_pinned_reads_as_pinned_afresh(world) -> None:
    """The hand pin's bare `[wasmtime."29.0.1"]` gives way to its arch tables, where it stood;
    the comment above it and the rest of the lock stay byte for byte."""
    project, up, server = world
    lock = world_lock(up)
    del lock["wasmtime"]
    rest = tomli_w.dumps(lock)
    before = '# our pins\n\n# pinned by hand for the CVE fix\n[wasmtime."29.0.1"]\n\n'
    project.lock_path.write_text(before + rest)
    proc = project.doit("update:wasmtime")
    assert "wasmtime: re-pinned 29.0.1: x86-64 has no sha256 pinned yet" in proc.stdout
    text = project.lock_path.read_text()
    assert '[wasmtime."29.0.1"]' not in text
    assert text.startswith('# our pins\n\n# pinned by hand for the CVE fix\n'
                           '[wasmtime."29.0.1".x86-64]\nsources = [\n')
    assert text.endswith('\n]\n\n' + rest)
    assert pins(project)["wasmtime"] == world_lock(up)["wasmtime"]


def test_commit_makes_one_commit_listing_the_bumps(world) -> None:
    project, up, server = world
    root = project.root
    project.lock_path.write_text("# our lock: reviewed by humans\n" + project.lock_path.read_text()
                                 .replace('[[docker."24.0.9".x86-64.sources]]',
                                          '# 24 stays for the old fleet\n[[docker."24.0.9".x86-64.sources]]'))
    (root / ".gitignore").write_text("build/\n__pycache__/\n")
    repo = git.Repo.init(root, initial_branch="main")
    repo.git.add("-A")
    repo.index.commit("initial", author=git.Actor("T", "t@example.org"),
                      committer=git.Actor("T", "t@example.org"))
    tracking.docker_release(up, "25.0.1")
    tracking.docker_index(up, ["24.0.9", "25.0.0", "25.0.1"])
    project.doit("update", "--commit", "--branch", "bakery/update", "--author", "Bakery Bot <bot@example.org>")
    assert repo.active_branch.name == "bakery/update"
    commits = list(repo.iter_commits("bakery/update"))
    assert len(commits) == 2 and list(repo.iter_commits("main"))[0] == commits[1]
    head = commits[0]
    assert (head.author.name, head.author.email) == ("Bakery Bot", "bot@example.org")
    assert head.message.startswith("release: docker: pinned 25.0.1; dropped 25.0.0\n")
    assert "sha256 computed by downloading at update time" in head.message
    assert docker_url("arm64", "25.0.1") in head.message
    assert "page bound" not in head.message   # no discovery warning, no such paragraph
    assert set(head.stats.files) == {"release/lock.toml"}
    assert not repo.is_dirty(untracked_files=True)
    text = project.lock_path.read_text()
    assert text.startswith("# our lock: reviewed by humans\n")
    assert "# 24 stays for the old fleet\n" in text
    assert [p.version for p in lockmod.load(project.lock_path)["docker"]] == ["24.0.9", "25.0.1"]
    # nothing new: no second commit
    project.doit("update", "--commit")
    assert len(list(repo.iter_commits("bakery/update"))) == 2


def test_commit_refuses_other_staged_changes(world) -> None:
    project, up, server = world
    root = project.root
    (root / ".gitignore").write_text("build/\n")
    repo = git.Repo.init(root, initial_branch="main")
    repo.index.add(["dodo.py", "release/lock.toml", ".gitignore"])
    repo.index.commit("initial", author=git.Actor("T", "t@example.org"),
                      committer=git.Actor("T", "t@example.org"))
    (root / "dodo.py").write_text((root / "dodo.py").read_text() + "\n# edit\n")
    repo.index.add(["dodo.py"])
    tracking.docker_release(up, "25.0.1")
    tracking.docker_index(up, ["24.0.9", "25.0.0", "25.0.1"])
    proc = project.doit("update", "--commit", check=False)
    assert proc.returncode != 0
    assert "other changes are staged (dodo.py)" in proc.stdout + proc.stderr
    assert len(list(repo.iter_commits())) == 1
    # refused before the lock is written: once unstaged, the next run commits the update
    # (a lock written by the refused run would leave it `nothing to commit`)
    assert not repo.index.diff(None, paths=["release/lock.toml"])
    repo.index.reset(paths=["dodo.py"])
    project.doit("update", "--commit")
    assert len(list(repo.iter_commits())) == 2


@pytest.mark.parametrize("text, message", [
    ("[docker]\nstream = 2\n", "release/versions.toml: docker.stream: unknown key (did you mean 'streams'?)"),
    ("[docker]\nstreams = 0\n", "release/versions.toml: docker.streams: expected a whole number >= 1, got 0"),
    ("[docker]\nversions = \"latest\"\n", "release/versions.toml: docker.versions: expected a list of strings"),
    ("[docker]\nkeep = 2\n", "release/versions.toml: docker: says nothing to carry"),
    ("[docker]\nversions = [\"1.0-rc1\"]\n", "release/versions.toml: docker.versions: version '1.0-rc1' must not contain '-'"),
    ("[nosuch]\nstreams = 1\n", "release/versions.toml: [nosuch]: there is no recipes/nosuch.toml"),
    ("[docker\n", "release/versions.toml: not valid TOML"),
])
def test_bad_desired_state_names_file_and_key(world, text: str, message: str) -> None:
    project, up, server = world
    (project.root / "release" / "versions.toml").write_text(text)
    proc = project.doit("update", check=False)
    assert proc.returncode != 0
    assert message in proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr


def test_update_of_an_untracked_recipe_says_how_to_track_it(world) -> None:
    project, up, server = world
    (project.root / "release" / "versions.toml").write_text("[docker]\nstreams = 2\n")
    proc = project.doit("update:wasmtime", check=False)
    assert proc.returncode != 0
    assert "update:wasmtime: wasmtime is not in release/versions.toml" in proc.stdout + proc.stderr
    everything = project.doit("update")
    assert "wasmtime: not in release/versions.toml, not updated" in everything.stdout


def test_a_broken_recipe_fails_alone(world) -> None:
    project, up, server = world
    (project.root / "recipes" / "wasmtime.toml").write_text("description = 1\n")
    tracking.docker_release(up, "25.0.1")
    tracking.docker_index(up, ["24.0.9", "25.0.0", "25.0.1"])
    proc = project.doit("update", check=False)
    assert proc.returncode != 0
    assert "wasmtime: FAILED: recipes/wasmtime.toml" in proc.stdout
    assert "25.0.1" in pins(project)["docker"]


def test_discovery_past_its_page_bound_warns_naming_the_url(world) -> None:
    """Upstream lists more pages than a discovery reads (MAX_PAGES): the run stays bounded,
    pins what it saw, and says which URL it stopped reading, never silently."""
    import recorded
    from sysext_bakery.upstream.base import MAX_PAGES
    project, up, server = world
    upstream = {"repo": "bytecodealliance/wasmtime", "pattern": r"^v(\d+\.\d+\.\d+)$"}
    old = [f"{n}.0.0" for n in range(10, 29)]
    pages = recorded.github_releases(up, upstream, ["29.0.1", "29.0.0", *old], page_size=1)
    assert pages > MAX_PAGES
    server.requests.clear()
    proc = project.doit("update:wasmtime")
    asked = [r for r in server.requests if "wasmtime" in r or "/repositories/" in r]
    assert len(asked) == MAX_PAGES
    assert "wasmtime: up to date" in proc.stdout
    assert ("wasmtime: warning: https://api.github.com/repos/bytecodealliance/wasmtime/releases"
            f"?per_page=100: stopped after {MAX_PAGES} pages with more announced") in proc.stdout


def test_the_commit_message_carries_discoverys_page_bound_warnings(world) -> None:
    """A version discovery did not read may be missing from the lock: the commit (what a
    pull request reviewer reads) says so, naming the recipe and the URL."""
    import recorded
    from sysext_bakery.upstream.base import MAX_PAGES
    project, up, server = world
    (project.root / ".gitignore").write_text("build/\n__pycache__/\n")
    repo = git.Repo.init(project.root, initial_branch="main")
    repo.git.add("-A")
    repo.index.commit("initial", author=git.Actor("T", "t@example.org"),
                      committer=git.Actor("T", "t@example.org"))
    tracking.docker_release(up, "25.0.1")
    tracking.docker_index(up, ["24.0.9", "25.0.0", "25.0.1"])
    upstream = {"repo": "bytecodealliance/wasmtime", "pattern": r"^v(\d+\.\d+\.\d+)$"}
    old = [f"{n}.0.0" for n in range(10, 29)]
    assert recorded.github_releases(up, upstream, ["29.0.1", "29.0.0", *old], page_size=1) > MAX_PAGES
    project.doit("update", "--commit")
    head = repo.head.commit
    assert head.message.startswith("release: docker: pinned 25.0.1; dropped 25.0.0\n")
    assert ("\n\ndiscovery read only part of upstream (page bound):\n- wasmtime: "
            "https://api.github.com/repos/bytecodealliance/wasmtime/releases?per_page=100: "
            f"stopped after {MAX_PAGES} pages with more announced") in head.message


def _recipes(count: int) -> list[SimpleNamespace]:
    """What discover_all reads of a recipe: its name and its [upstream] section."""
    return [SimpleNamespace(name=f"r{i}", upstream={"type": "github-releases"})
            for i in range(count)]


def test_discovery_threads_leave_the_stop_signals_to_the_main_thread(monkeypatch):
    masks = []

    def discover(section, get):
        masks.append(signal.pthread_sigmask(signal.SIG_BLOCK, []))
        return f"found by {threading.current_thread().name}"
    monkeypatch.setattr(update_run.upstream, "discover", discover)
    found = update_run.discover_all(_recipes(5), get=None)
    assert len(found) == 5 and len(masks) == 5
    assert all({signal.SIGINT, signal.SIGTERM} <= mask for mask in masks), masks
    assert signal.SIGINT not in signal.pthread_sigmask(signal.SIG_BLOCK, [])


def test_ctrl_c_during_discovery_drops_what_has_not_started(monkeypatch):
    """Ctrl-C ends `doit update` once the discoveries under way end (each bounded by the HTTP
    client's timeouts); the catalogue's others are not run first."""
    started, release = [], threading.Event()
    all_busy = threading.Event()

    def discover(section, get):
        started.append(section)
        if len(started) == update_run.DISCOVERY_THREADS:
            all_busy.set()
        release.wait(30)
        return "found"
    monkeypatch.setattr(update_run.upstream, "discover", discover)

    handled = threading.Event()

    def on_sigint(signum, frame):
        handled.set()
        raise KeyboardInterrupt

    def interrupt():
        assert all_busy.wait(30)
        signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)
        handled.wait(30)     # the busy discoveries end only once Ctrl-C is under way
        release.set()
    before = signal.signal(signal.SIGINT, on_sigint)
    try:
        threading.Thread(target=interrupt, daemon=True).start()
        with pytest.raises(KeyboardInterrupt):
            update_run.discover_all(_recipes(3 * update_run.DISCOVERY_THREADS), get=None)
    finally:
        signal.signal(signal.SIGINT, before)
    assert handled.is_set()
    assert len(started) == update_run.DISCOVERY_THREADS
