"""Publishing into a directory: contents, idempotence, immutability, signing, locking and
crash safety, with real files, real gpg and a real killed publisher process."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from sysext_bakery.files import file_digest
from sysext_bakery.publish import directory as publish
from sysext_bakery.publish import sign
from sysext_bakery.publish import sysupdate as release
from sysext_bakery.build import sums
from sysext_bakery.errors import BakeryError
from sysupdate import (gpg_agents, gpg_key, make_gpg_key, new_gpg_key, stop_gpg_agent,  # noqa: F401
                       write_provenance)

REPO = Path(__file__).resolve().parent.parent
BASE = "https://sysexts.example.invalid/bakery/"


def fake_image(work: Path, name: str, version: str, data: bytes, stream: str | None = None,
               arch: str = "x86-64", **facts: str) -> None:
    """Image bytes need not be a file system for the publisher: it only copies and hashes."""
    import hashlib
    images = work / "images"
    images.mkdir(parents=True, exist_ok=True)
    raw = images / f"{name}-{version}-{arch}.raw"
    raw.write_bytes(data)
    write_provenance(work / "state", name, version, arch, hashlib.sha256(data).hexdigest(),
                     len(data), stream, **facts)


SIGNER = object()   # the configured fingerprint is the signer's own


def run(work: Path, dest: Path, signer=None, allow_unsigned: bool = False, *,
        fingerprint=SIGNER, next_key: str | None = None,
        rotate_key: bool = False) -> publish.PublishReport:
    if fingerprint is SIGNER:
        fingerprint = signer.key if signer else None
    config = release.ReleaseConfig(base_url=BASE, signing_key=fingerprint,
                                   next_signing_key=next_key)
    return publish.publish_directory(
        publish.built_images(work / "images", work / "state"), dest,
        config, publish.load_templates(REPO / "release/templates"),
        signer, "0123abcd" * 5, allow_unsigned, rotate_key)


def listing(dest: Path) -> dict[str, tuple[int, bytes]]:
    return {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in dest.iterdir()}


def test_publishes_everything_and_a_second_run_changes_nothing(tmp_path):
    fake_image(tmp_path, "docker", "24.0.9", b"docker one", stream="24")
    fake_image(tmp_path, "docker", "24.0.9", b"docker arm", stream="24", arch="arm64")
    fake_image(tmp_path, "wasmtime", "20.0.0", b"wasm")
    dest = tmp_path / "pub"
    report = run(tmp_path, dest)
    assert set(report.copied) == {"docker-24.0.9-x86-64.raw", "docker-24.0.9-arm64.raw",
                                  "wasmtime-20.0.0-x86-64.raw"}
    names = {p.name for p in dest.iterdir()}
    assert {"SHA256SUMS", "noop.conf", "index.json", "docker.conf", "docker.transfer",
            "docker-24.conf", "docker-24.transfer", "wasmtime.conf", "docker.butane.yaml",
            "docker-arm64.butane.yaml", "wasmtime.butane.yaml", "docker.ign", "docker-arm64.ign",
            "wasmtime.ign"} <= names
    assert "SHA256SUMS.gpg" not in names
    conf = (dest / "docker.conf").read_text()
    assert f"Path={BASE}\n" in conf and "MatchPattern=docker-@v-%a.raw" in conf
    assert "Verify=false" in conf and "# Verify=false: this release is not signed" in conf
    assert "CurrentSymlink=/etc/extensions/docker.raw" in conf and "InstancesMax=3" in conf
    assert "MatchPattern=docker-24.@v-%a.raw" in (dest / "docker-24.conf").read_text()
    assert (dest / "docker.transfer").read_text() == conf
    # every image is in SHA256SUMS with its real hash
    manifest = sums.parse((dest / "SHA256SUMS").read_text())
    assert manifest == {p.name: file_digest(p) for p in dest.glob("*.raw")}

    before = listing(dest)
    again = run(tmp_path, dest)
    assert not again.changed and "nothing to publish" in again.summary()
    assert listing(dest) == before


def test_index_and_butane_snippets_describe_the_published_files(tmp_path):
    fake_image(tmp_path, "docker", "24.0.9", b"old")
    fake_image(tmp_path, "docker", "24.0.10", b"new")
    dest = tmp_path / "pub"
    run(tmp_path, dest)
    index = json.loads((dest / "index.json").read_text())["images"]
    assert [(i["version"], i["size"]) for i in index] == [("24.0.9", 3), ("24.0.10", 3)]
    for entry in index:
        assert entry["sha256"] == file_digest(dest / entry["file"])
        # this provenance records neither: the revision published and the image's mtime
        assert entry["revision"] == "0123abcd" * 5 and entry["built"].endswith("Z")
        assert entry["sources"] == [{"url": "https://example.invalid/docker-"
                                     f"{entry['version']}.tar.gz", "sha256": "ab" * 32}]
    snippet = yaml.safe_load((dest / "docker.butane.yaml").read_text())
    assert snippet["variant"] == "flatcar"
    files = {f["path"]: f for f in snippet["storage"]["files"]}
    image = files["/opt/extensions/docker/docker-24.0.10-x86-64.raw"]   # the newest (24.0.10 > 24.0.9)
    assert image["contents"]["verification"]["hash"] == "sha256-" + file_digest(
        dest / "docker-24.0.10-x86-64.raw")
    assert_downloads_pinned(snippet, dest)
    assert snippet["storage"]["links"][0] == {
        "path": "/etc/extensions/docker.raw", "hard": False,
        "target": "/opt/extensions/docker/docker-24.0.10-x86-64.raw"}
    units = {u["name"]: u for u in snippet["systemd"]["units"]}
    assert units["systemd-sysupdate.timer"]["enabled"] is True
    assert "-C docker update" in units["systemd-sysupdate.service"]["dropins"][0]["contents"]


def assert_downloads_pinned(snippet: dict, dest: Path) -> None:
    """Every file the snippet downloads is in the published directory, pinned by its sha256."""
    for f in snippet["storage"]["files"]:
        url = f["contents"]["source"]
        assert url.startswith(BASE), url
        assert f["contents"]["verification"]["hash"] == "sha256-" + file_digest(
            dest / url[len(BASE):]), url


def test_provenance_revision_and_build_time_win(tmp_path):
    fake_image(tmp_path, "docker", "24.0.9", b"one", revision="feedface" * 5,
               built="2025-01-02T03:04:05Z")
    dest = tmp_path / "pub"
    run(tmp_path, dest)
    [entry] = json.loads((dest / "index.json").read_text())["images"]
    assert (entry["revision"], entry["built"]) == ("feedface" * 5, "2025-01-02T03:04:05Z")


def test_a_revision_that_is_no_commit_id_is_refused_before_anything_is_written(tmp_path):
    """It would be written into index.json, which the next publish refuses to read back."""
    fake_image(tmp_path, "docker", "24.0.9", b"one")
    with pytest.raises(BakeryError) as err:
        publish.publish_directory(
            publish.built_images(tmp_path / "images", tmp_path / "state"), tmp_path / "pub",
            release.ReleaseConfig(base_url=BASE), publish.load_templates(REPO / "release/templates"),
            None, "--output=/tmp/x", allow_unsigned=True)
    assert "revision '--output=/tmp/x' is not a full git commit id" in err.value.message
    assert not (tmp_path / "pub").exists()


def test_butane_snippet_names_keep_their_arch(tmp_path):
    fake_image(tmp_path, "tool", "1.0", b"arm only", arch="arm64")
    dest = tmp_path / "pub"
    run(tmp_path, dest)
    assert not (dest / "tool.butane.yaml").exists()
    snippet = yaml.safe_load((dest / "tool-arm64.butane.yaml").read_text())
    assert snippet["storage"]["links"][0]["target"] == "/opt/extensions/tool/tool-1.0-arm64.raw"
    fake_image(tmp_path, "tool", "1.0", b"now also x86", arch="x86-64")
    run(tmp_path, dest)
    assert "tool-1.0-arm64.raw" in (dest / "tool-arm64.butane.yaml").read_text()
    assert "tool-1.0-x86-64.raw" in (dest / "tool.butane.yaml").read_text()


@pytest.mark.parametrize("names, named", [
    (["docker", "docker-compose"], ["'docker'", "'docker-compose'"]),
    (["kubernetes", "kubernetes-v1"], ["'kubernetes'", "'kubernetes-v1'"]),
    (["noop"], ["noop.conf"]),
])
def test_names_that_would_match_each_other_are_refused(tmp_path, names, named):
    for n, name in enumerate(names):
        fake_image(tmp_path, name, "1.0", bytes([n]))
    dest = tmp_path / "pub"
    with pytest.raises(BakeryError) as err:
        run(tmp_path, dest)
    assert all(n in str(err.value) for n in named), err.value
    assert [p.name for p in dest.iterdir()] == [publish.LOCK]   # nothing copied


def test_names_that_only_share_a_prefix_are_fine(tmp_path):
    fake_image(tmp_path, "docker", "24.0.9", b"one")
    fake_image(tmp_path, "dockerd", "1.0", b"two")
    fake_image(tmp_path, "docker_compose", "2.0", b"three")
    run(tmp_path, tmp_path / "pub")
    assert len(sums.parse((tmp_path / "pub/SHA256SUMS").read_text())) == 3


def test_merges_with_what_is_published_and_drops_only_vanished_files(tmp_path):
    fake_image(tmp_path, "docker", "24.0.9", b"one")
    dest = tmp_path / "pub"
    run(tmp_path, dest)
    other = tmp_path / "other"   # a later build directory that no longer has 24.0.9
    fake_image(other, "docker", "24.0.10", b"two")
    fake_image(other, "docker", "25.0.0", b"three")
    run(other, dest)
    manifest = sums.parse((dest / "SHA256SUMS").read_text())
    assert set(manifest) == {"docker-24.0.9-x86-64.raw", "docker-24.0.10-x86-64.raw",
                             "docker-25.0.0-x86-64.raw"}
    assert len(json.loads((dest / "index.json").read_text())["images"]) == 3
    (dest / "docker-25.0.0-x86-64.raw").unlink()   # removed by the operator
    (tmp_path / "nothing/images").mkdir(parents=True)
    run(tmp_path / "nothing", dest)
    assert set(sums.parse((dest / "SHA256SUMS").read_text())) == {
        "docker-24.0.9-x86-64.raw", "docker-24.0.10-x86-64.raw"}


def test_a_published_image_is_immutable(tmp_path):
    fake_image(tmp_path, "docker", "24.0.9", b"first build")
    dest = tmp_path / "pub"
    run(tmp_path, dest)
    published = file_digest(dest / "docker-24.0.9-x86-64.raw")
    fake_image(tmp_path, "docker", "24.0.9", b"different bytes")
    rebuilt = file_digest(tmp_path / "images/docker-24.0.9-x86-64.raw")
    with pytest.raises(BakeryError) as err:
        run(tmp_path, dest)
    assert published in str(err.value) and rebuilt in str(err.value)
    assert "docker-24.0.9-x86-64.raw" in str(err.value)
    assert file_digest(dest / "docker-24.0.9-x86-64.raw") == published


def test_image_not_matching_its_provenance_is_refused(tmp_path):
    fake_image(tmp_path, "docker", "24.0.9", b"as built")
    (tmp_path / "images/docker-24.0.9-x86-64.raw").write_bytes(b"changed after the build")
    dest = tmp_path / "pub"
    with pytest.raises(BakeryError, match="provenance") as err:
        run(tmp_path, dest)
    assert "doit pack:docker-24.0.9-x86-64" in str(err.value)   # a task that exists
    assert not list(dest.glob("*.raw")) and not list(dest.glob(".*.tmp"))


def test_stray_images_are_left_alone(tmp_path, capsys):
    fake_image(tmp_path, "docker", "24.0.9", b"one")
    dest = tmp_path / "pub"
    dest.mkdir()
    (dest / "docker-9.9.9-x86-64.raw").write_bytes(b"nobody built this")
    (dest / "notes.raw").write_bytes(b"not even an image name")
    run(tmp_path, dest)
    manifest = sums.parse((dest / "SHA256SUMS").read_text())
    assert set(manifest) == {"docker-24.0.9-x86-64.raw"}
    assert [i["file"] for i in json.loads((dest / "index.json").read_text())["images"]] == [
        "docker-24.0.9-x86-64.raw"]
    err = capsys.readouterr().err
    assert f"warning: {dest / 'docker-9.9.9-x86-64.raw'}" in err and "notes.raw" in err
    assert (dest / "docker-9.9.9-x86-64.raw").read_bytes() == b"nobody built this"


def test_an_image_index_json_vouches_for_is_adopted(tmp_path):
    """Killed after index.json but before SHA256SUMS, and the build directory is gone."""
    fake_image(tmp_path, "docker", "24.0.9", b"one")
    dest = tmp_path / "pub"
    run(tmp_path, dest)
    fake_image(tmp_path / "later", "docker", "24.0.10", b"two")
    run(tmp_path / "later", dest)
    (dest / "SHA256SUMS").write_text(sums.render({
        "docker-24.0.9-x86-64.raw": file_digest(dest / "docker-24.0.9-x86-64.raw")}))
    (tmp_path / "empty/images").mkdir(parents=True)
    report = run(tmp_path / "empty", dest)
    assert report.written == ("SHA256SUMS",) and not report.copied
    assert set(sums.parse((dest / "SHA256SUMS").read_text())) == {
        "docker-24.0.9-x86-64.raw", "docker-24.0.10-x86-64.raw"}
    # bytes the index does not vouch for are not adopted
    (dest / "SHA256SUMS").write_text(sums.render({
        "docker-24.0.9-x86-64.raw": file_digest(dest / "docker-24.0.9-x86-64.raw")}))
    (dest / "docker-24.0.10-x86-64.raw").write_bytes(b"not what index.json says")
    run(tmp_path / "empty", dest)
    assert "docker-24.0.10-x86-64.raw" not in sums.parse((dest / "SHA256SUMS").read_text())
    assert "24.0.10" not in (dest / "index.json").read_text()


def test_signed_release(tmp_path, gpg_key):
    key = gpg_key
    fake_image(tmp_path, "docker", "24.0.9", b"one")
    dest = tmp_path / "pub"
    with sign.signer_from_env({"BAKERY_SIGNING_KEY": key.armored_secret}) as signer:
        assert signer is not None and signer.key == key.fingerprint
        run(tmp_path, dest, signer)
        assert "Verify=yes" in (dest / "docker.conf").read_text()
        assert (dest / "bakery-signing-key.gpg").read_bytes() == key.public
        snippet = yaml.safe_load((dest / "docker.butane.yaml").read_text())
        assert "/etc/systemd/import-pubring.gpg" in {f["path"] for f in snippet["storage"]["files"]}
        assert_downloads_pinned(snippet, dest)
        signature = (dest / "SHA256SUMS.gpg").read_bytes()
        assert not run(tmp_path, dest, signer).changed   # a valid signature is kept
        assert (dest / "SHA256SUMS.gpg").read_bytes() == signature
        (dest / "SHA256SUMS.gpg").write_bytes(b"garbage")
        assert run(tmp_path, dest, signer).written == ("SHA256SUMS.gpg",)
        home = str(signer.gnupghome)
        assert gpg_agents(home)   # signing started one for the temporary home …
    assert not gpg_agents(home)   # … and it is gone with it
    # gpg itself (with only the published key) accepts the signature
    keyring = tmp_path / "pubring.gpg"
    keyring.write_bytes(key.public)
    subprocess.run(["gpg", "--batch", "--no-default-keyring", "--keyring", str(keyring),
                    "--verify", str(dest / "SHA256SUMS.gpg"), str(dest / "SHA256SUMS")],
                   check=True, capture_output=True, env={**os.environ, "GNUPGHOME": str(tmp_path)})


def signed_then_new_image(work: Path, key) -> tuple[Path, dict[str, tuple[int, bytes]]]:
    """docker 24.0.9 published signed with `key` into work/pub, then 24.0.10 built; the
    directory and its listing before anything else runs."""
    fake_image(work, "docker", "24.0.9", b"one")
    dest = work / "pub"
    with sign.signer_from_env({"BAKERY_SIGNING_KEY": key.armored_secret}) as signer:
        run(work, dest, signer)
    fake_image(work, "docker", "24.0.10", b"two")
    return dest, listing(dest)


def test_signed_directory_is_not_silently_downgraded(tmp_path, gpg_key):
    dest, before = signed_then_new_image(tmp_path, gpg_key)
    with pytest.raises(BakeryError) as err:
        run(tmp_path, dest)
    assert str(dest) in str(err.value) and "BAKERY_SIGNING_KEY_ID" in str(err.value)
    assert "allow_unsigned=True" in str(err.value)
    assert listing(dest) == before
    report = run(tmp_path, dest, allow_unsigned=True)
    assert set(report.removed) == {"SHA256SUMS.gpg", "bakery-signing-key.gpg"}
    assert not (dest / "SHA256SUMS.gpg").exists() and not (dest / "bakery-signing-key.gpg").exists()
    assert "Verify=false" in (dest / "docker.conf").read_text()
    assert "docker-24.0.10-x86-64.raw" in sums.parse((dest / "SHA256SUMS").read_text())
    assert not run(tmp_path, dest).changed   # unsigned from now on, no flag needed


def test_a_test_keys_agent_is_stopped(tmp_path):
    key = make_gpg_key(tmp_path)
    assert gpg_agents(str(key.gnupghome))
    stop_gpg_agent(key.gnupghome)
    deadline = time.monotonic() + 5
    while gpg_agents(str(key.gnupghome)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not gpg_agents(str(key.gnupghome))


def test_signing_key_id_from_the_users_keyring(tmp_path, monkeypatch, gpg_key):
    key = gpg_key
    monkeypatch.setenv("GNUPGHOME", str(key.gnupghome))
    with sign.signer_from_env({"BAKERY_SIGNING_KEY_ID": key.fingerprint}) as signer:
        assert sign.export_public_key(signer) == key.public
    with pytest.raises(BakeryError, match="0000DEADBEEF"):
        with sign.signer_from_env({"BAKERY_SIGNING_KEY_ID": "0000DEADBEEF"}):
            pass
    with sign.signer_from_env({}) as signer:
        assert signer is None


def test_lock_stops_a_second_publisher(tmp_path):
    import fcntl
    fake_image(tmp_path, "docker", "24.0.9", b"one")
    dest = tmp_path / "pub"
    dest.mkdir()
    with open(dest / publish.LOCK, "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(BakeryError, match="another publisher"):
            run(tmp_path, dest)
    assert not list(dest.glob("*.raw"))
    run(tmp_path, dest)
    assert (dest / "docker-24.0.9-x86-64.raw").exists()


PUBLISHER = """
import sys
from pathlib import Path
from sysext_bakery.publish import directory as publish
from sysext_bakery.publish import sysupdate as release
work, dest = Path(sys.argv[1]), Path(sys.argv[2])
publish.publish_directory(publish.built_images(work / "images", work / "state"), dest,
                          release.ReleaseConfig(base_url=sys.argv[3]),
                          publish.load_templates(Path(sys.argv[4])), None, "0123abcd" * 5)
"""


def consistent(dest: Path, work: Path) -> None:
    """What a reader may rely on at any moment: every image under its own name is whole
    (a copy in progress hides under a dot name), and every file SHA256SUMS names is there."""
    built = {image.filename: image.sha256
             for image, _ in publish.built_images(work / "images", work / "state")}
    for path in dest.iterdir():
        if not path.name.startswith("."):
            assert path.suffix != ".tmp", path
            if path.suffix == ".raw":
                assert file_digest(path) == built[path.name], path
    if (dest / "SHA256SUMS").exists():
        for name, sha in sums.parse((dest / "SHA256SUMS").read_text()).items():
            assert file_digest(dest / name) == sha, name


def test_killed_between_image_copy_and_manifest_the_next_run_completes(tmp_path):
    big = os.urandom(48 << 20)
    for n in range(3):
        fake_image(tmp_path, "big", f"1.0.{n}", big[n:] + bytes([n]))
    dest = tmp_path / "pub"
    for attempt in range(5):   # kill as soon as an image is in place, before SHA256SUMS
        proc = subprocess.Popen([sys.executable, "-c", PUBLISHER, str(tmp_path), str(dest), BASE,
                                 str(REPO / "release/templates")], cwd=REPO)
        deadline = time.monotonic() + 60
        while not list(dest.glob("big-*.raw")) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.001)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        if not (dest / "SHA256SUMS").exists():
            break
        for p in dest.iterdir():   # too late this time: start over
            p.unlink()
    else:
        pytest.fail("never caught the publisher between image copy and manifest")
    copied = [p.name for p in dest.glob("big-*.raw")]
    assert copied and not (dest / "SHA256SUMS").exists()
    consistent(dest, tmp_path)
    report = run(tmp_path, dest)
    consistent(dest, tmp_path)
    assert not list(dest.glob(".*.tmp"))   # the killed run's temp file is cleaned up
    assert set(sums.parse((dest / "SHA256SUMS").read_text())) == {
        f"big-1.0.{n}-x86-64.raw" for n in range(3)}
    assert not set(report.copied) & set(copied)   # adopted, not copied again
    assert not run(tmp_path, dest).changed


# ---- signing continuity -------------------------------------------------------------------

def fingerprints_of(keyring: Path) -> tuple[str, ...]:
    return sign.keyring_fingerprints(keyring.read_bytes())


def signed_by(dest: Path, key) -> bool:
    return sign.signature_valid((dest / "SHA256SUMS").read_bytes(),
                                (dest / "SHA256SUMS.gpg").read_bytes(), key.public)


def test_another_key_than_the_configured_one_is_refused(tmp_path, gpg_key, new_gpg_key):
    dest, before = signed_then_new_image(tmp_path, gpg_key)
    # the same directory published fresh (as CI does) and in place: both refused
    for target in (dest, tmp_path / "fresh"):
        with sign.signer_from_env({"BAKERY_SIGNING_KEY": new_gpg_key.armored_secret}) as signer:
            with pytest.raises(BakeryError) as err:
                run(tmp_path, target, signer, fingerprint=gpg_key.fingerprint)
        assert gpg_key.fingerprint in str(err.value) and new_gpg_key.fingerprint in str(err.value)
        assert "--rotate-key" in str(err.value)
    assert listing(dest) == before
    assert not (tmp_path / "fresh/SHA256SUMS").exists()


def test_a_configured_fingerprint_needs_a_key_unless_allow_unsigned(tmp_path, gpg_key):
    """CI publishes into a fresh directory each run: the configuration is what says signed."""
    fake_image(tmp_path, "docker", "24.0.9", b"one")
    dest = tmp_path / "fresh"
    with pytest.raises(BakeryError) as err:
        run(tmp_path, dest, fingerprint=gpg_key.fingerprint)
    assert gpg_key.fingerprint in str(err.value) and "--allow-unsigned" in str(err.value)
    assert {p.name for p in dest.iterdir()} <= {publish.LOCK}
    report = run(tmp_path, dest, allow_unsigned=True, fingerprint=gpg_key.fingerprint)
    assert "docker-24.0.9-x86-64.raw" in report.copied
    assert "Verify=false" in (dest / "docker.conf").read_text()


def test_a_key_the_configuration_does_not_name_is_refused(tmp_path, gpg_key):
    fake_image(tmp_path, "docker", "24.0.9", b"one")
    with sign.signer_from_env({"BAKERY_SIGNING_KEY": gpg_key.armored_secret}) as signer:
        with pytest.raises(BakeryError) as err:
            run(tmp_path, tmp_path / "pub", signer, fingerprint=None)
    assert f'fingerprint = "{gpg_key.fingerprint}"' in str(err.value)
    assert not (tmp_path / "pub/SHA256SUMS").exists()


@pytest.mark.parametrize("variable", ["BAKERY_SIGNING_KEY", "BAKERY_SIGNING_KEY_ID"])
@pytest.mark.parametrize("value", ["", " \n"])
def test_an_empty_signing_secret_is_an_error_not_unsigned(variable, value):
    with pytest.raises(BakeryError, match=f"{variable} is set but empty"):
        with sign.signer_from_env({variable: value}):
            pass


def test_a_failed_signature_leaves_the_directory_untouched(tmp_path):
    key = make_gpg_key(tmp_path, passphrase="correct horse")
    try:
        fake_image(tmp_path, "docker", "24.0.9", b"one")
        dest = tmp_path / "pub"
        env = {"BAKERY_SIGNING_KEY": key.armored_secret}
        with sign.signer_from_env({**env, "BAKERY_SIGNING_PASSPHRASE": "correct horse"}) as signer:
            run(tmp_path, dest, signer)
        fake_image(tmp_path, "docker", "24.0.10", b"two")
        before = listing(dest)
        with sign.signer_from_env(env) as signer:   # the passphrase is missing
            with pytest.raises(BakeryError, match="gpg failed signing") as err:
                run(tmp_path, dest, signer)
        assert key.fingerprint in str(err.value)
        assert listing(dest) == before
        assert not list(dest.glob(".*.tmp"))
    finally:
        stop_gpg_agent(key.gnupghome)


def test_key_rotation_announces_then_switches(tmp_path, gpg_key, new_gpg_key):
    old, new = gpg_key, new_gpg_key
    both = {"BAKERY_SIGNING_KEY": old.armored_secret + new.armored_secret}
    dest = tmp_path / "pub"
    fake_image(tmp_path, "docker", "24.0.9", b"one")
    with sign.signer_from_env(both) as signer:
        assert set(signer.available) == {old.fingerprint, new.fingerprint}
        run(tmp_path, dest, signer, fingerprint=old.fingerprint)
        assert fingerprints_of(dest / "bakery-signing-key.gpg") == (old.fingerprint,)
        assert signed_by(dest, old)
        with pytest.raises(BakeryError, match="nothing to rotate"):
            run(tmp_path, dest, signer, fingerprint=old.fingerprint, rotate_key=True)
    with sign.signer_from_env({"BAKERY_SIGNING_KEY": new.armored_secret}) as signer:
        # --rotate-key to a key that was never announced: refused
        with pytest.raises(BakeryError, match="not announced"):
            run(tmp_path, dest, signer, fingerprint=old.fingerprint, rotate_key=True)
    with sign.signer_from_env(both) as signer:

        # phase 1: the keyring holds both, the old key still signs
        run(tmp_path, dest, signer, fingerprint=old.fingerprint, next_key=new.fingerprint)
        assert set(fingerprints_of(dest / "bakery-signing-key.gpg")) == {old.fingerprint,
                                                                         new.fingerprint}
        assert signed_by(dest, old) and not signed_by(dest, new)
        snippet = yaml.safe_load((dest / "docker.butane.yaml").read_text())
        assert_downloads_pinned(snippet, dest)   # new hosts get the two-key keyring

        # phase 2: --rotate-key signs with the new key; nothing else changes
        report = run(tmp_path, dest, signer, fingerprint=old.fingerprint,
                     next_key=new.fingerprint, rotate_key=True)
        assert report.written == ("SHA256SUMS.gpg",)
        assert signed_by(dest, new) and not signed_by(dest, old)

    # phase 3: the configuration names the new key; the keyring drops the old one
    with sign.signer_from_env({"BAKERY_SIGNING_KEY": new.armored_secret}) as signer:
        with pytest.raises(BakeryError, match="nothing to rotate"):
            run(tmp_path, dest, signer, fingerprint=new.fingerprint, rotate_key=True)
        run(tmp_path, dest, signer, fingerprint=new.fingerprint)
        assert fingerprints_of(dest / "bakery-signing-key.gpg") == (new.fingerprint,)
        assert not run(tmp_path, dest, signer, fingerprint=new.fingerprint).changed


def test_a_directory_published_with_another_key_needs_rotate_key(tmp_path, gpg_key, new_gpg_key):
    """The configuration was switched to a key the directory's hosts were never offered
    (as after a compromised key): only --rotate-key publishes, on purpose."""
    fake_image(tmp_path, "docker", "24.0.9", b"one")
    dest = tmp_path / "pub"
    with sign.signer_from_env({"BAKERY_SIGNING_KEY": gpg_key.armored_secret}) as signer:
        run(tmp_path, dest, signer)
    before = listing(dest)
    with sign.signer_from_env({"BAKERY_SIGNING_KEY": new_gpg_key.armored_secret}) as signer:
        with pytest.raises(BakeryError) as err:
            run(tmp_path, dest, signer)
        assert gpg_key.fingerprint in str(err.value) and new_gpg_key.fingerprint in str(err.value)
        assert listing(dest) == before
        run(tmp_path, dest, signer, rotate_key=True)
    assert fingerprints_of(dest / "bakery-signing-key.gpg") == (new_gpg_key.fingerprint,)
    assert signed_by(dest, new_gpg_key)


def test_index_json_carries_replaces_and_conflicts(tmp_path):
    fake_image(tmp_path, "docker", "24.0.9", b"d", replaces=["docker-flatcar", "containerd-flatcar"],
               conflicts=["containerd"])
    fake_image(tmp_path, "wasmtime", "29.0.1", b"w")          # a record from before these fields
    dest = tmp_path / "pub"
    run(tmp_path, dest)
    index = {i["name"]: i for i in json.loads((dest / "index.json").read_text())["images"]}
    assert index["docker"]["replaces"] == ["docker-flatcar", "containerd-flatcar"]
    assert index["docker"]["conflicts"] == ["containerd"]
    assert (index["wasmtime"]["replaces"], index["wasmtime"]["conflicts"]) == ([], [])
    again = release.parse_index((dest / "index.json").read_text(), "index.json")
    assert [(i.name, i.replaces, i.conflicts) for i in again] == [
        ("docker", ("docker-flatcar", "containerd-flatcar"), ("containerd",)), ("wasmtime", (), ())]
    links = yaml.safe_load((dest / "docker.butane.yaml").read_text())["storage"]["links"]
    assert {"path": "/etc/extensions/docker-flatcar.raw", "target": "/dev/null", "hard": False,
            "overwrite": True} in links


@pytest.mark.parametrize("bad", [["../etc/passwd"], "docker-flatcar", [1]])
def test_a_provenance_with_bad_replaces_is_refused(tmp_path, bad):
    fake_image(tmp_path, "docker", "24.0.9", b"d", replaces=bad)
    with pytest.raises(BakeryError, match="not a valid image provenance file"):
        run(tmp_path, tmp_path / "pub")


def test_a_killed_signing_runs_key_home_is_removed_by_the_next_run(tmp_path, gpg_key):
    """SIGKILL skips the TemporaryDirectory cleanup, leaving the imported secret key in
    $TMPDIR: the next signing run removes homes whose process is gone, never a live one's."""
    import subprocess
    import sys
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    orphan = tmp / f"{sign.HOME_PREFIX}{dead}-abc123"
    (orphan / "private-keys-v1.d").mkdir(parents=True)
    (orphan / "private-keys-v1.d/secret.key").write_text("secret")
    live = tmp / f"{sign.HOME_PREFIX}{os.getpid()}-def456"
    live.mkdir()
    assert sign.remove_orphaned_homes(str(tmp)) == [str(orphan)]
    assert not orphan.exists() and live.is_dir()


@pytest.mark.parametrize("name", ["SHA256SUMS", "index.json"])
def test_a_published_file_that_is_not_utf8_is_named_not_a_traceback(tmp_path, name):
    fake_image(tmp_path, "docker", "24.0.9", b"one")
    dest = tmp_path / "pub"
    run(tmp_path, dest)
    (dest / name).write_bytes((dest / name).read_bytes()[:10] + b"\xff\n")
    with pytest.raises(BakeryError) as err:
        run(tmp_path, dest)
    assert err.value.message.startswith(f"{dest / name}: ")
    assert "utf-8" in err.value.message.lower()


def test_sums_parse_names_bytes_that_are_not_utf8():
    line = f"{'ab' * 32}  docker.raw\n".encode()
    assert sums.parse(line, "S") == {"docker.raw": "ab" * 32}
    with pytest.raises(BakeryError) as err:
        sums.parse(line + b"\xfe" + line, "S")
    assert err.value.message == "S: line 2: not valid UTF-8 (byte 0xfe)"


# every name the bakery itself lists, or a hand-made manifest of a published directory would
PLAIN_NAMES = ["docker-24.0.9-x86-64.raw", "docker.conf", "docker-24.transfer", "noop.conf",
               "docker.butane.yaml", "docker-arm64.ign", "bakery-signing-key.gpg", "index.json",
               "a name with spaces.raw", "ünïcode.raw"]


def test_sums_parse_keeps_every_plain_file_name():
    text = "".join(f"{'ab' * 32}  {name}\n" for name in PLAIN_NAMES)
    assert sums.parse(text, "S") == {name: "ab" * 32 for name in PLAIN_NAMES}
    assert sums.parse(sums.render(sums.parse(text, "S")), "S") == sums.parse(text, "S")


@pytest.mark.parametrize("name, said", [
    ("../x.raw", "file name '../x.raw' contains '/'"),
    ("sub/x.raw", "file name 'sub/x.raw' contains '/'"),
    ("/etc/x.raw", "file name '/etc/x.raw' contains '/'"),
    (".", "'.' is not a file name"),
    ("..", "'..' is not a file name"),
    ("x\x00.raw", "file name 'x\\x00.raw' contains a control character"),
    ("x\x1b[2J.raw", "file name 'x\\x1b[2J.raw' contains a control character"),
    ("x\x7f.raw", "file name 'x\\x7f.raw' contains a control character"),
    ("x\x85.raw", "file name 'x\\x85.raw' contains a control character"),
    ("SHA256SUMS", "lists SHA256SUMS, which cannot be in its own manifest"),
    ("SHA256SUMS.gpg", "lists SHA256SUMS.gpg, which cannot be in its own manifest"),
])
def test_sums_parse_refuses_a_name_that_is_not_a_plain_file_name(name, said):
    """SHA256SUMS is read back from published directories that may be damaged or tampered
    with: a listed name is a file of that directory, never a path out of it."""
    text = f"{'ab' * 32}  ok.raw\n{'cd' * 32} *{name}\n"
    with pytest.raises(BakeryError) as err:
        sums.parse(text, "pub/SHA256SUMS")
    assert err.value.message == f"pub/SHA256SUMS:2: {said}"
    assert "remove it to have it rewritten" in err.value.hint


def test_sums_parse_refuses_a_digest_that_is_not_hex():
    with pytest.raises(BakeryError) as err:
        sums.parse(f"{'zz' * 32}  docker.raw\n", "S")
    assert err.value.message.startswith("S:1: not a sha256sum line: ")
    assert sums.parse(f"{'AB' * 32}  docker.raw\n", "S") == {"docker.raw": "ab" * 32}


def test_sums_parse_refuses_one_name_with_two_digests_and_lets_an_exact_repeat_through():
    """A name listed twice with other digests would let the last line win, and a host
    check whichever its reader took; the same line twice says one thing."""
    one, other = f"{'ab' * 32}  docker.raw\n", f"{'cd' * 32}  docker.raw\n"
    assert sums.parse(one + one.upper().replace("DOCKER.RAW", "docker.raw"), "S") == \
        {"docker.raw": "ab" * 32}
    with pytest.raises(BakeryError) as err:
        sums.parse(one + f"{'ef' * 32}  x.raw\n" + other, "pub/SHA256SUMS")
    assert err.value.message == (f"pub/SHA256SUMS:3: docker.raw is listed again with another "
                                 f"sha256 (line 1: {'ab' * 32}, line 3: {'cd' * 32})")


def test_a_tampered_published_manifest_is_refused_and_nothing_is_written(tmp_path):
    fake_image(tmp_path, "docker", "24.0.9", b"one")
    dest = tmp_path / "pub"
    run(tmp_path, dest)
    fake_image(tmp_path, "docker", "24.0.10", b"two")
    manifest = (dest / "SHA256SUMS").read_text()
    (dest / "SHA256SUMS").write_text(manifest + f"{'ab' * 32}  ../outside.raw\n")
    before = listing(dest)
    with pytest.raises(BakeryError) as err:
        run(tmp_path, dest)
    assert err.value.message == f"{dest / 'SHA256SUMS'}:2: file name '../outside.raw' contains '/'"
    assert listing(dest) == before and not (tmp_path / "outside.raw").exists()


def test_a_damaged_build_manifest_is_named_by_the_pack_step_and_doit_sums_rewrites_it(tmp_path):
    """build/images/SHA256SUMS is read back by every pack (`sums.update`); `doit sums`
    writes it from the images alone, which is what the hint promises."""
    images = tmp_path / "images"
    images.mkdir()
    (images / "a-1-x86-64.raw").write_bytes(b"a")
    (images / "SHA256SUMS").write_text(f"{'ab' * 32}  ../a.raw\n")
    with pytest.raises(BakeryError) as err:
        sums.update(images, {"a-1-x86-64.raw": "cd" * 32})
    assert err.value.message == f"{images / 'SHA256SUMS'}:1: file name '../a.raw' contains '/'"
    (images / "SHA256SUMS").unlink()
    sums.update(images, {"a-1-x86-64.raw": "cd" * 32})
    assert sums.parse((images / "SHA256SUMS").read_bytes()) == {"a-1-x86-64.raw": "cd" * 32}


@pytest.mark.parametrize("name", ["SHA256SUMS", "index.json", "bakery-signing-key.gpg"])
def test_a_published_file_past_the_index_limit_is_refused_unread(tmp_path, name):
    """What the publisher reads back from its directory is bounded (sysupdate.MAX_INDEX):
    a damaged or replaced file is named, not read whole into memory."""
    fake_image(tmp_path, "docker", "24.0.9", b"one")
    dest = tmp_path / "pub"
    run(tmp_path, dest)
    with (dest / name).open("ab") as f:
        f.truncate(release.MAX_INDEX + 1)          # sparse: no disk space spent
    with pytest.raises(BakeryError) as err:
        run(tmp_path, dest, allow_unsigned=True)
    assert err.value.message.startswith(f"{dest / name}: larger than "), err.value.message
    assert f"published {name}" in err.value.message


def test_a_provenance_file_past_the_input_limit_is_refused_unread(tmp_path):
    from sysext_bakery.inputs import MAX_BYTES
    fake_image(tmp_path, "docker", "24.0.9", b"one")
    [prov] = (tmp_path / "state/images").glob("*.json")
    with prov.open("ab") as f:
        f.write(b" " * MAX_BYTES)
    with pytest.raises(BakeryError) as err:
        run(tmp_path, tmp_path / "pub")
    assert err.value.message.startswith(f"{prov}: larger than "), err.value.message


def test_a_template_that_is_not_utf8_is_named(tmp_path):
    templates = tmp_path / "templates"
    shutil.copytree(REPO / "release/templates", templates)
    broken = templates / publish.TEMPLATES[0]
    broken.write_bytes(b"[Transfer]\n\xff\n")
    with pytest.raises(BakeryError) as err:
        publish.load_templates(templates)
    assert f"{broken}: line 2: not valid UTF-8" in str(err.value)
