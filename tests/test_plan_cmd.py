"""`doit plan` (pinned but unpublished images as a CI matrix) and locked builds
(`BAKERY_LOCKED=1`), with the real doit CLI against a loopback mirror."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import Project
from sysext_bakery.build.fetch import fetch
from sysext_bakery.errors import BakeryError
from sysext_bakery.publish import sysupdate
from sysext_bakery.publish.sysupdate import PublishedImage, index_json
from upstream import containerd_url, wasmtime_url

ALL = sorted(f"{n}-{v}-{a}" for n, v in (("docker", "24.0.8"), ("docker", "24.0.9"),
                                          ("docker", "25.0.0"), ("containerd", "1.7.27"),
                                          ("wasmtime", "29.0.1"))
             for a in ("x86-64", "arm64"))


def publish_index(directory: Path, ids: list[str]) -> None:
    images = []
    for image_id in ids:
        name, version, arch = image_id.split("-", 2)
        images.append(PublishedImage(name, version, arch, "0" * 64, 1))
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "index.json").write_text(index_json(images))


def matrix(project: Project, *args: str, env: dict[str, str] | None = None) -> dict:
    # the zero reporter keeps doit's own task lines off stdout: only the JSON is left
    proc = project.doit("--reporter=zero", "plan", *args, env=env)
    return json.loads(proc.stdout)


def test_plan_lists_only_what_is_not_published(project: Project, tmp_path: Path) -> None:
    published = tmp_path / "published"
    publish_index(published, ["docker-24.0.9-x86-64", "docker-24.0.9-arm64", "wasmtime-29.0.1-arm64"])
    got = matrix(project, "--from", str(published))
    assert [e["image"] for e in got["include"]] == [
        i for i in ALL if i not in ("docker-24.0.9-x86-64", "docker-24.0.9-arm64", "wasmtime-29.0.1-arm64")]
    assert {"image": "wasmtime-29.0.1-x86-64", "name": "wasmtime", "version": "29.0.1",
            "arch": "x86-64"} in got["include"]
    # everything published: an empty matrix; nothing published yet: everything
    publish_index(published, ALL)
    assert matrix(project, "--from", str(published)) == {"include": []}
    assert [e["image"] for e in matrix(project, "--from", str(tmp_path / "none"))["include"]] == ALL


def test_plan_respects_bakery_arch_and_writes_a_file(project: Project, tmp_path: Path) -> None:
    out = tmp_path / "matrix.json"
    project.doit("plan", "--from", str(tmp_path / "none"), "--output", str(out),
                 env={"BAKERY_ARCH": "arm64"})
    assert [e["image"] for e in json.loads(out.read_text())["include"]] == [
        i for i in ALL if i.endswith("-arm64")]


def test_plan_from_a_url_and_from_the_github_metadata_release(project: Project, tmp_path: Path,
                                                              httpserver) -> None:
    index = tmp_path / "idx"
    publish_index(index, ALL[:4])
    httpserver.expect_request("/pub/index.json").respond_with_data(
        (index / "index.json").read_text(), content_type="application/json")
    assert [e["image"] for e in matrix(project, "--from", httpserver.url_for("/pub"))["include"]] == ALL[4:]
    # --github reads the metadata release's index.json, through BAKERY_MIRROR like any download
    mirror = tmp_path / "mirror"
    publish_index(mirror / "github.com/example/bakery/releases/download/metadata", ALL[:6])
    got = matrix(project, "--github", "--repo", "example/bakery", env={"BAKERY_MIRROR": str(mirror)})
    assert [e["image"] for e in got["include"]] == ALL[6:]


@pytest.mark.parametrize("text", ["{\"images\": 1}", "[" * 100_000 + "]" * 100_000])
@pytest.mark.parametrize("reporter", [[], ["--reporter=zero"]])
def test_plan_with_a_broken_index_names_it(project: Project, tmp_path: Path, text: str,
                                           reporter: list[str]) -> None:
    """Also as CI runs it, with --reporter=zero (which shows no task failure), and for an
    index nested past Python's recursion limit."""
    (tmp_path / "index.json").write_text(text)
    proc = project.doit(*reporter, "plan", "--from", str(tmp_path), check=False)
    assert proc.returncode != 0
    if reporter:
        assert proc.stdout == ""     # no half matrix for the workflow to read
    assert f"{tmp_path / 'index.json'}: not a bakery index.json" in proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr


def test_locked_build_refuses_an_unpinned_download(project: Project, upstream) -> None:
    lock = project.lock_path.read_text()
    project.lock_path.write_text(lock + '\n[wasmtime."30.0.0"]\n')
    project.mirror.requests.clear()
    proc = project.doit("fetch:wasmtime-30.0.0-x86-64", env={"BAKERY_LOCKED": "1"}, check=False)
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert "wasmtime-30.0.0-x86-64: BAKERY_LOCKED=1 and 1 source(s) have no sha256 pinned in " \
           "release/lock.toml" in out
    assert "doit update:wasmtime" in out
    assert not any("30.0.0" in r for r in project.mirror.requests)       # nothing downloaded
    assert "30.0.0" in project.lock_path.read_text() and "30.0.0\".x86-64" not in project.lock_path.read_text()
    # a pinned image fetches fine when locked
    project.doit("fetch:wasmtime-29.0.1-x86-64", env={"BAKERY_LOCKED": "1"})


def test_locked_build_ignores_an_earlier_unlocked_fetch(project: Project) -> None:
    """A fetch record left by an unlocked run (trust on first use) does not make the fetch
    up to date once locked while the lock has no sha256 for it."""
    pinned = project.lock_path.read_text()
    unpinned = "\n".join(line for line in pinned.split("\n\n") if "wasmtime" not in line) \
        + '\n\n[wasmtime."29.0.1"]\n'
    project.lock_path.write_text(unpinned)
    project.doit("stage:wasmtime-29.0.1-x86-64")                  # staged: records the sha256 (TOFU)
    assert "wasmtime-v29.0.1-x86_64" in project.lock_path.read_text()
    project.lock_path.write_text(unpinned)                       # the recorded pin was dropped
    proc = project.doit("fetch:wasmtime-29.0.1-x86-64", env={"BAKERY_LOCKED": "1"}, check=False)
    assert proc.returncode != 0
    assert "wasmtime-29.0.1-x86-64: BAKERY_LOCKED=1" in proc.stdout + proc.stderr


def test_fetch_locked_refuses_even_with_a_checksum_file(tmp_path: Path, mirror, upstream) -> None:
    url = containerd_url("x86-64", "1.7.27")
    with pytest.raises(BakeryError) as e:
        fetch(url, None, tmp_path, checksum_url=url + ".sha256sum", mirror=mirror.url, locked=True)
    assert "BAKERY_LOCKED=1" in str(e.value) and e.value.hint and "doit update" in e.value.hint
    assert not any(tmp_path.iterdir())
    got = fetch(wasmtime_url("arm64", "29.0.1"), upstream.sha256[wasmtime_url("arm64", "29.0.1")],
                tmp_path, mirror=mirror.url, locked=True)
    assert got.sha256 == upstream.sha256[wasmtime_url("arm64", "29.0.1")]


def test_bad_bakery_locked_value(project: Project) -> None:
    proc = project.doit("list", env={"BAKERY_LOCKED": "maybe"}, check=False)
    assert "BAKERY_LOCKED: 'maybe' is not 1 or 0" in proc.stdout + proc.stderr


def test_plan_with_an_index_that_is_not_utf8_names_it(project: Project, tmp_path: Path) -> None:
    """Read from a directory and from the GitHub metadata release (here through a mirror
    directory): bytes that are not UTF-8 are a broken index like any other, no traceback."""
    broken = b'{"images": ["\xff"]}'
    (tmp_path / "index.json").write_bytes(broken)
    proc = project.doit("plan", "--from", str(tmp_path), check=False)
    assert proc.returncode != 0
    assert (f"{tmp_path / 'index.json'}: not a bakery index.json: line 1: not valid UTF-8 "
            "(byte 0xff)") in proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    metadata = tmp_path / "mirror/github.com/example/bakery/releases/download/metadata"
    metadata.mkdir(parents=True)
    (metadata / "index.json").write_bytes(broken)
    proc = project.doit("plan", "--github", "--repo", "example/bakery", check=False,
                        env={"BAKERY_MIRROR": str(tmp_path / "mirror")})
    assert proc.returncode != 0
    assert ("https://github.com/example/bakery/releases/download/metadata/index.json: not a "
            "bakery index.json: line 1: not valid UTF-8 (byte 0xff)") in proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr


def test_plan_from_a_directory_reads_index_json_within_the_url_limit(tmp_path: Path) -> None:
    """A --from directory is bounded like a --from URL (sysupdate.MAX_INDEX): a huge file is
    refused before it is read whole."""
    from sysext_bakery.publish import pending
    publish_index(tmp_path, ALL[:2])
    assert pending.published(str(tmp_path), None, "metadata", None, tmp_path) == set(ALL[:2])
    with (tmp_path / "index.json").open("r+b") as f:
        f.truncate(sysupdate.MAX_INDEX + 1)          # sparse: no disk space spent
    with pytest.raises(BakeryError) as err:
        pending.published(str(tmp_path), None, "metadata", None, tmp_path)
    assert err.value.message.startswith(f"{tmp_path / 'index.json'}: larger than ")


def test_plan_github_reads_the_metadata_index_within_the_index_limit(tmp_path: Path) -> None:
    """--github and --from read index.json under one bound (sysupdate.MAX_INDEX), not an API
    page's: an index past http.MAX_BODY is read, one past MAX_INDEX refused."""
    from sysext_bakery import http
    from sysext_bakery.publish import pending
    metadata = tmp_path / "mirror/github.com/example/bakery/releases/download/metadata"
    publish_index(metadata, ALL[:2])
    with (metadata / "index.json").open("a") as f:      # JSON allows trailing white space
        f.write(" " * (http.MAX_BODY + 1))
    assert http.MAX_BODY < sysupdate.MAX_INDEX

    def published() -> set[str]:
        return pending.published("", "example/bakery", "metadata", str(tmp_path / "mirror"),
                                 tmp_path)

    assert published() == set(ALL[:2])
    with (metadata / "index.json").open("r+b") as f:
        f.truncate(sysupdate.MAX_INDEX + 1)          # sparse: no disk space spent
    with pytest.raises(BakeryError) as err:
        published()
    assert err.value.message.startswith(
        "https://github.com/example/bakery/releases/download/metadata/index.json: ")
    assert f"larger than {sysupdate.MAX_INDEX} bytes" in err.value.message
