"""The lock: parsing with errors that name the key, and trust-on-first-use recording."""
from __future__ import annotations

import difflib
import stat
from pathlib import Path

import pytest

from sysext_bakery.recipe import lock
from sysext_bakery.recipe.lock_edit import with_sources, with_version
from sysext_bakery.errors import BakeryError


def test_load_pins(tmp_path: Path) -> None:
    path = tmp_path / "lock.toml"
    path.write_text('[docker."24.0.9".x86-64]\nsources = [{ url = "https://a/b.tgz", sha256 = "abababababababababababababababababababababababababababababababab" }]\n'
                    '[wasmtime."29.0.1"]\n')
    pins = lock.load(path)
    assert pins["docker"] == [lock.Pin("docker", "24.0.9",
                                       {"x86-64": [{"url": "https://a/b.tgz", "sha256": "ab" * 32}]})]
    assert pins["wasmtime"] == [lock.Pin("wasmtime", "29.0.1", {})]
    assert lock.load(tmp_path / "missing.toml") == {}


@pytest.mark.parametrize("text, message", [
    ('[docker."24.0-rc1"]\n', "lock.toml: docker.24.0-rc1: version '24.0-rc1' must not contain '-'"),
    ('[docker."24.0.9".x86-64]\nsources = "x"\n', "lock.toml: docker.24.0.9.x86-64: expected sources = ["),
    ('[docker."24.0.9".x86-64]\nsources = [{ url = "u", sha = "x" }]\n',
     "lock.toml: docker.24.0.9.x86-64: expected sources = ["),
    ('docker = 1\n', "lock.toml: docker: expected a table of versions"),
    ('[docker."24.0.9".x86_64]\nsources = []\n', "lock.toml: docker.24.0.9: unknown arch 'x86_64'"),
    ('[docker."24.0.9".x86-64]\nsources = [{ url = 1 }]\n', "lock.toml: docker.24.0.9.x86-64: expected"),
    ('[docker\n', "lock.toml: not valid TOML"),
])
def test_bad_lock_names_the_key(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "lock.toml"
    path.write_text(text)
    with pytest.raises(BakeryError) as e:
        lock.load(path)
    assert message in str(e.value)


def test_record_keeps_other_entries_and_is_world_readable(tmp_path: Path) -> None:
    path = tmp_path / "lock.toml"
    path.write_text('[docker."24.0.9"]\n\n[wasmtime."29.0.1"]\n')
    entry = [{"url": "https://a/b.tgz", "sha256": "cd" * 32}]
    lock.record_sha256(path, "docker", "24.0.9", "arm64", entry)
    pins = lock.load(path)
    assert pins["docker"][0].arches == {"arm64": entry}
    assert pins["wasmtime"][0].version == "29.0.1"
    assert path.read_text().startswith('[docker."24.0.9"]\n')   # no header forced on a hand-made lock
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["lock.toml"]


def test_record_into_a_new_lock(tmp_path: Path) -> None:
    path = tmp_path / "lock.toml"
    lock.record_sha256(path, "kubernetes", "v1.32.2", "x86-64", [{"url": "https://k/b", "sha256": "ef" * 32}])
    assert path.read_text() == lock.HEADER + (
        '[kubernetes."v1.32.2".x86-64]\nsources = [\n    { url = "https://k/b", sha256 = "efefefefefefefefefefefefefefefefefefefefefefefefefefefefefefefef" },\n]\n')
    assert lock.load(path)["kubernetes"][0].arches == {"x86-64": [{"url": "https://k/b", "sha256": "ef" * 32}]}


COMMENTED = """\
# our pins; reviewed in every PR
[docker."24.0.9".x86-64]
sources = [{ url = "https://a/docker.tgz", sha256 = "abababababababababababababababababababababababababababababababab" }]  # from the release page

[docker."24.0.9".arm64]
sources = [
    { url = "https://a/docker-arm64.tgz" },  # sha256 on first fetch
    { url = 'https://a/extra.tgz', sha256 = "" },
]

# pinned by hand
[wasmtime."29.0.1"]
"""


def changes(before: str, after: str) -> list[str]:
    return [line for line in difflib.ndiff(before.splitlines(), after.splitlines())
            if line[:1] in "+-?"]


def test_record_keeps_comments_and_layout(tmp_path: Path) -> None:
    """Recording edits only the image's entry: every comment, the inline table and the
    spacing come back unchanged, and the diff is the new entry or the sha256 values."""
    path = tmp_path / "lock.toml"
    path.write_text(COMMENTED)
    lock.record_sha256(path, "wasmtime", "29.0.1", "x86-64",
                       [{"url": "https://w/wasmtime.tar.xz", "sha256": "cd" * 32}])
    after = path.read_text()
    assert changes(COMMENTED, after) == [
        "+ ", '+ [wasmtime."29.0.1".x86-64]', "+ sources = [",
        f'+     {{ url = "https://w/wasmtime.tar.xz", sha256 = "{"cd" * 32}" }},', "+ ]"]
    assert after.startswith(COMMENTED)

    lock.record_sha256(path, "docker", "24.0.9", "arm64",
                       [{"url": "https://a/docker-arm64.tgz", "sha256": "01" * 32},
                        {"url": "https://a/extra.tgz", "sha256": "02" * 32}])
    assert sorted(line for line in changes(after, path.read_text()) if line[0] in "+-") == [
        '+     { url = "https://a/docker-arm64.tgz", sha256 = "0101010101010101010101010101010101010101010101010101010101010101" },  # sha256 on first fetch',
        "+     { url = 'https://a/extra.tgz', sha256 = \"0202020202020202020202020202020202020202020202020202020202020202\" },",
        '-     { url = "https://a/docker-arm64.tgz" },  # sha256 on first fetch',
        "-     { url = 'https://a/extra.tgz', sha256 = \"\" },"]
    assert lock.load(path)["docker"][0].arches["arm64"][1] == {"url": "https://a/extra.tgz", "sha256": "02" * 32}


def test_record_between_tables_keeps_the_next_tables_comment(tmp_path: Path) -> None:
    path = tmp_path / "lock.toml"
    path.write_text(COMMENTED)
    lock.record_sha256(path, "docker", "24.0.9", "s390x", [])
    text = path.read_text()
    assert changes(COMMENTED, text) == ['+ [docker."24.0.9".s390x]', "+ sources = []", "+ "]
    assert '[docker."24.0.9".s390x]\nsources = []\n\n# pinned by hand\n[wasmtime."29.0.1"]' in text


@pytest.mark.parametrize("entry, says", [
    ('url = "https://a/b.tgz\\n", sha256 = "%s"' % ("ab" * 32), "sources[0].url"),
    ('url = "http://a/b.tgz"', "must start with https://"),
    ('url = "https://a/b.tgz", sha256 = "AB"', "sources[0].sha256: expected 64"),
])
def test_a_bad_pinned_url_or_sha256_is_named(tmp_path: Path, entry: str, says: str) -> None:
    path = tmp_path / "lock.toml"
    path.write_text(f'[docker."24.0.9".x86-64]\nsources = [{{ {entry} }}]\n')
    with pytest.raises(BakeryError) as err:
        lock.load(path, "release/lock.toml")
    assert "release/lock.toml: docker.24.0.9.x86-64" in str(err.value) and says in str(err.value)


def systemd_says(a: str, b: str) -> str:
    """The oracle: `systemd-analyze compare-versions A B` prints `A == B`, `A < B` or `A > B`."""
    import subprocess
    out = subprocess.run(["systemd-analyze", "compare-versions", a, b], capture_output=True,
                         text=True).stdout.split()
    return out[1]


@pytest.mark.parametrize("a, b", [("1.0+1", "1.0_1"), ("1.0_1", "1.0,1"), ("1.1", "1.01"),
                                  ("24.0.9", "24.0.09")])
def test_versions_systemd_orders_as_equal_are_refused(tmp_path: Path, a: str, b: str) -> None:
    assert systemd_says(a, b) == "=="
    path = tmp_path / "lock.toml"
    path.write_text(f'[wasmtime."{a}"]\n[wasmtime."29.0.1"]\n[wasmtime."{b}"]\n[docker."24.0.9"]\n')
    pins, refused = lock.load_checked(path, "release/lock.toml")
    # neither spelling is built: which one sysupdate would pick is not defined
    assert [p.version for p in pins["wasmtime"]] == ["29.0.1"] and len(pins["docker"]) == 1
    assert len(refused) == 1 and refused[0][0] == "wasmtime"
    first, second = sorted([a, b])
    assert str(refused[0][1]) == (
        f"release/lock.toml: wasmtime: versions {first!r} and {second!r} are the same version to "
        "systemd (`systemd-analyze compare-versions` says ==), so systemd-sysupdate cannot order "
        "their images; neither is built\n"
        "  hint: keep one spelling: remove the other wasmtime table(s) from release/lock.toml "
        "(and from release/versions.toml, if it names them)")
    with pytest.raises(BakeryError):
        lock.load(path)


def test_versions_systemd_orders_apart_stay(tmp_path: Path) -> None:
    versions = ["1.0+1", "1.0.1", "1.0", "1.0a", "1.0A", "1.0.0"]
    for a, b in zip(versions, versions[1:]):
        assert systemd_says(a, b) != "=="
    path = tmp_path / "lock.toml"
    path.write_text("".join(f'[tool."{v}"]\n' for v in versions))
    pins, refused = lock.load_checked(path)
    assert refused == [] and sorted(p.version for p in pins["tool"]) == sorted(versions)


def test_equal_versions_through_doit(project) -> None:
    """`doit list` names the problem once and exits 0; the recipe's build fails over it."""
    project.lock_path.write_text('[wasmtime."29.0.1"]\n[wasmtime."29.0.01"]\n')
    listed = project.doit("list")
    assert listed.stderr.count("wasmtime: versions '29.0.01' and '29.0.1' are the same version") == 1
    listed_tasks = dict(line.split(None, 1) for line in listed.stdout.splitlines() if line.strip())
    assert listed_tasks["build:wasmtime-29.0.1"].startswith("withheld by a problem")
    run = project.doit("build:wasmtime", check=False)
    assert run.returncode != 0
    assert (run.stdout + run.stderr).count("are the same version to systemd") == 1
    assert not list(project.images.glob("*.raw"))
    # asked for by name, either spelling fails over that problem: it is pinned, not "not pinned"
    for version in ("29.0.1", "29.0.01"):
        asked = project.doit(f"build:wasmtime-{version}", check=False)
        said = asked.stdout + asked.stderr
        assert asked.returncode != 0 and said.count("are the same version to systemd") == 1
        assert "is not pinned" not in said


def test_update_fills_a_hand_pin_in_place_of_its_bare_header() -> None:
    """`doit update` pinning a hand pin writes what a fresh pin reads like: the bare
    `[name."version"]` goes, the arch tables take its place, what is around it stays. A hand
    pin whose header carries a comment, or has one below it, keeps its header."""
    sources = {arch: [{"url": f"https://w/wasmtime-{arch}.tar.xz", "sha256": "cd" * 32}]
               for arch in ("x86-64", "arm64")}
    fresh = with_version(lock.HEADER, "wasmtime", "29.0.1", sources, "lock.toml")
    pinned = fresh.removeprefix(lock.HEADER)
    around = ('# ours\n[docker."24.0.9"]\n\n# pinned by hand\n{}\n\n# next\n[zz."1"]\n')
    text = with_version(around.format('[wasmtime."29.0.1"]'), "wasmtime", "29.0.1", sources, "l")
    assert text == around.format(pinned.rstrip("\n"))
    at_end = with_version(lock.HEADER + '[wasmtime."29.0.1"]\n', "wasmtime", "29.0.1", sources, "l")
    assert at_end == fresh
    for kept in ('[wasmtime."29.0.1"]  # CVE fix', '[wasmtime."29.0.1"]\n# CVE fix'):
        text = with_version(around.format(kept), "wasmtime", "29.0.1", sources, "l")
        assert text.startswith(around.format(kept).split("\n\n# next")[0])
    # recording a first-use sha256 (a build) still adds just the entry: the header stays
    recorded = with_sources(around.format('[wasmtime."29.0.1"]'), "wasmtime", "29.0.1",
                            "x86-64", sources["x86-64"], "l")
    assert recorded.startswith(around.format('[wasmtime."29.0.1"]').split("\n\n# next")[0])


def test_filling_an_indented_bare_header_keeps_its_indentation() -> None:
    """`  [w."1"]` gives way to arch tables indented as it was: two spaces, every arch."""
    sources = {arch: [{"url": f"https://w/wasmtime-{arch}.tar.xz", "sha256": "cd" * 32}]
               for arch in ("x86-64", "arm64")}
    text = with_version('[wasmtime]\n  [wasmtime."29.0.1"]\n\n[zz."1"]\n', "wasmtime", "29.0.1",
                        sources, "l")
    headers = [line for line in text.splitlines() if line.lstrip().startswith("[")]
    assert headers == ['[wasmtime]', '  [wasmtime."29.0.1".x86-64]',
                       '  [wasmtime."29.0.1".arm64]', '[zz."1"]']


def test_a_lock_written_with_crlf_line_ends_keeps_them(tmp_path: Path) -> None:
    sources = {arch: [{"url": f"https://w/wasmtime-{arch}.tar.xz", "sha256": "cd" * 32}]
               for arch in ("x86-64", "arm64")}
    crlf = (lock.HEADER + '[docker."24.0.9"]\n\n[wasmtime."29.0.1"]\n').replace("\n", "\r\n")
    for text in (with_version(crlf, "wasmtime", "29.0.1", sources, "l"),
                 with_version(crlf, "runc", "1.2.5", sources, "l"),
                 with_sources(crlf, "docker", "24.0.9", "x86-64", sources["x86-64"], "l"),
                 # CRLF throughout, only the last line without its line end
                 with_sources(crlf.removesuffix("\r\n"), "docker", "24.0.9", "x86-64",
                              sources["x86-64"], "l")):
        assert text.count("\n") == text.count("\r\n") and text != crlf
    # through the file: read and written as it is
    path = tmp_path / "lock.toml"
    path.write_bytes(crlf.encode())
    lock.record_sha256(path, "docker", "24.0.9", "x86-64", sources["x86-64"])
    data = path.read_bytes()
    assert data.count(b"\n") == data.count(b"\r\n") and data.startswith(crlf.encode()[:200])
    assert lock.load(path)["docker"][0].arches["x86-64"] == sources["x86-64"]


def test_a_lock_mixing_line_ends_keeps_every_line_it_does_not_touch() -> None:
    sources = [{"url": "https://w/docker.tgz", "sha256": "ab" * 32}]
    mixed = lock.HEADER + '[docker."24.0.9"]\r\n\r\n[wasmtime."29.0.1"]\n'
    text = with_sources(mixed, "docker", "24.0.9", "x86-64", sources, "l")
    assert text.startswith(lock.HEADER + '[docker."24.0.9"]\r\n')
    assert text.count("\r\n") == mixed.count("\r\n")     # none added, none taken away
    assert 'sha256 = "' + "ab" * 32 in text


def test_a_lock_that_is_not_utf8_when_edited_is_a_bakery_error(tmp_path: Path) -> None:
    # loaded fine earlier, broken by hand before the edit: named, never a UnicodeDecodeError
    path = tmp_path / "lock.toml"
    path.write_bytes(lock.HEADER.encode() + b'[docker."24.0.9"]\n# caf\xe9\n')
    before = path.read_bytes()
    with pytest.raises(BakeryError, match=r"lock.toml: line \d+: not valid UTF-8 \(byte 0xe9\)"):
        lock.record_sha256(path, "docker", "24.0.9", "x86-64",
                           [{"url": "https://w/docker.tgz", "sha256": "ab" * 32}])
    assert path.read_bytes() == before
