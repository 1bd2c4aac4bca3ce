"""Trust on first use pins a sha256 only once the download staged: an HTML error page
served with 200 fails the stage and is never pinned; once the mirror is fixed, the next
build fetches again, stages and pins. Through the real doit CLI and a loopback server."""
from __future__ import annotations

import hashlib
import tomllib

from conftest import Project, executed
from elf import make_elf
from upstream import tar_bytes

PATH = "/example.org/tool/tool-1.0.tar.gz"
URL = "https://example.org/tool/tool-{version}.tar.gz"
ERROR_PAGE = b"<!doctype html><html><body><h1>Rate limit exceeded</h1></body></html>\n"


def unpinned_tool(project: Project) -> None:
    (project.root / "recipes" / "tool.toml").write_text(
        'description = "t"\nhomepage = "https://example.org/"\narches = ["x86-64"]\n'
        f'[[sources]]\nurl = "{URL}"\ninstall = {{ "tool/*" = "/usr/bin/" }}\n')
    project.write_lock({"tool": {"1.0": {}}})


def pinned_sources(project: Project) -> object:
    return tomllib.loads(project.lock_path.read_text())["tool"]["1.0"].get("x86-64")


def test_an_error_page_is_not_pinned_and_a_fixed_mirror_then_is(project: Project, httpserver) -> None:
    unpinned_tool(project)
    env = {"BAKERY_MIRROR": httpserver.url_for("/").rstrip("/")}
    httpserver.expect_request(PATH).respond_with_data(ERROR_PAGE, content_type="text/html")
    run = project.doit("build:tool-1.0", env=env, check=False)
    assert run.returncode != 0
    assert "stage:tool-1.0-x86-64" in executed(run) and "pack:tool-1.0-x86-64" not in executed(run)
    out = run.stdout + run.stderr
    assert "tool-1.0.tar.gz: cannot be read as tar.gz" in out and "HTML error page" in out
    assert "Traceback" not in out
    assert pinned_sources(project) is None           # nothing recorded: the lock is as written
    assert "trust on first use" not in out

    httpserver.clear()
    archive = tar_bytes([("tool/", None, 0o755), ("tool/tool", make_elf("x86-64"), 0o755)])
    httpserver.expect_request(PATH).respond_with_data(archive, content_type="application/gzip")
    run = project.doit("build:tool-1.0", env=env)
    assert {"fetch:tool-1.0-x86-64", "stage:tool-1.0-x86-64", "pack:tool-1.0-x86-64"} <= set(executed(run))
    assert run.stderr.count("WARNING: trust on first use") == 1
    assert pinned_sources(project) == {"sources": [
        {"url": "https://example.org/tool/tool-1.0.tar.gz", "sha256": hashlib.sha256(archive).hexdigest()}]}
    requests = len(httpserver.log)
    assert executed(project.doit("build:tool-1.0", env=env)) == []   # pinned: no new fetch
    assert len(httpserver.log) == requests


def test_a_lost_pin_of_bytes_that_staged_is_recorded_again(project: Project, httpserver) -> None:
    """The stage record vouches for bytes that staged before: fetching them again pins them
    at once. The stage reruns (its fetch record no longer says pending) but packs nothing."""
    unpinned_tool(project)
    env = {"BAKERY_MIRROR": httpserver.url_for("/").rstrip("/")}
    archive = tar_bytes([("tool/", None, 0o755), ("tool/tool", make_elf("x86-64"), 0o755)])
    httpserver.expect_request(PATH).respond_with_data(archive)
    project.doit("build:tool-1.0", env=env)
    pinned = pinned_sources(project)
    assert pinned is not None
    unpinned_tool(project)                         # the sha256 removed by hand, to re-pin
    run = project.doit("build:tool-1.0", env=env)
    assert executed(run) == ["fetch:tool-1.0-x86-64", "stage:tool-1.0-x86-64"]
    assert run.stderr.count("WARNING: trust on first use") == 1
    assert pinned_sources(project) == pinned
