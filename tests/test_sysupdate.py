"""The published directory, consumed by the real systemd-sysupdate (254 from bookworm-backports
on Debian 12) over a loopback HTTP server, the way a Flatcar host consumes it."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from sysext_bakery.publish import directory as publish
from sysext_bakery.publish import sign
from sysext_bakery.publish import sysupdate as release
from sysext import make_root, requires_sysext, run_merged
from sysupdate import Sysupdate, gpg_key, make_image, new_gpg_key, serve, sysupdate  # noqa: F401

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.root


def publish_dir(work: Path, dest: Path, base_url: str, signer=None, *,
                fingerprint: str | None = None, next_key: str | None = None,
                rotate_key: bool = False) -> publish.PublishReport:
    """Publish; the configured fingerprint is the signer's own unless `fingerprint` says."""
    templates = publish.load_templates(REPO / "release/templates")
    config = release.ReleaseConfig(base_url=base_url,
                                   signing_key=fingerprint or (signer.key if signer else None),
                                   next_signing_key=next_key)
    built = publish.built_images(work / "images", work / "state")
    return publish.publish_directory(built, dest, config, templates, signer, "0123abcd" * 5,
                                     rotate_key=rotate_key)


def host(tmp: Path, name: str, *confs: Path) -> tuple[Path, Path]:
    """A host root as the Butane snippet leaves it, and a definitions dir holding `confs`."""
    root = tmp / "root"
    (root / "opt/extensions" / name).mkdir(parents=True, exist_ok=True)
    (root / "etc/extensions").mkdir(parents=True, exist_ok=True)
    defs = tmp / "defs"
    shutil.rmtree(defs, ignore_errors=True)
    defs.mkdir()
    for conf in confs:
        shutil.copyfile(conf, defs / conf.name)
    return root, defs


def current(root: Path, name: str) -> str:
    link = root / "etc/extensions" / f"{name}.raw"
    assert link.is_symlink(), f"{link} is not a symlink"
    target = (link.parent / link.readlink()).resolve()
    assert target.is_file() and target.parent == (root / "opt/extensions" / name).resolve()
    return target.name


def installed(root: Path, name: str) -> list[str]:
    return sorted(p.name for p in (root / "opt/extensions" / name).glob("*.raw"))


def update(su: Sysupdate, defs: Path, root: Path, keyring: Path | None = None) -> None:
    proc = su.run(defs, root, "update", keyring=keyring)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_update_installs_newest_then_upgrades_and_prunes(tmp_path, sysupdate):
    dest = tmp_path / "pub"
    dest.mkdir()
    with serve(dest) as url:
        make_image(tmp_path, "hello", "1.0.0")
        publish_dir(tmp_path, dest, url)
        root, defs = host(tmp_path, "hello", dest / "hello.conf")
        update(sysupdate, defs, root)
        assert current(root, "hello") == "hello-1.0.0-x86-64.raw"

        make_image(tmp_path, "hello", "1.1.0")
        publish_dir(tmp_path, dest, url)
        update(sysupdate, defs, root)
        assert current(root, "hello") == "hello-1.1.0-x86-64.raw"
        assert installed(root, "hello") == ["hello-1.0.0-x86-64.raw", "hello-1.1.0-x86-64.raw"]

        # InstancesMax=3: installing a 4th version removes the oldest
        for version in ("1.2.0", "1.10.0"):
            make_image(tmp_path, "hello", version)
            publish_dir(tmp_path, dest, url)
            update(sysupdate, defs, root)
        assert current(root, "hello") == "hello-1.10.0-x86-64.raw"
        assert installed(root, "hello") == ["hello-1.1.0-x86-64.raw", "hello-1.10.0-x86-64.raw",
                                            "hello-1.2.0-x86-64.raw"]


def test_signed_release_verifies_and_tampering_is_refused(tmp_path, sysupdate, gpg_key):
    key = gpg_key
    keyring = tmp_path / "pubring.gpg"
    dest = tmp_path / "pub"
    dest.mkdir()
    with serve(dest) as url:
        make_image(tmp_path, "hello", "1.0.0")
        with sign.signer_from_env({"BAKERY_SIGNING_KEY": key.armored_secret}) as signer:
            publish_dir(tmp_path, dest, url, signer)
        assert "Verify=yes" in (dest / "hello.conf").read_text()
        keyring.write_bytes((dest / "bakery-signing-key.gpg").read_bytes())

        root, defs = host(tmp_path / "good", "hello", dest / "hello.conf")
        update(sysupdate, defs, root, keyring=keyring)
        assert current(root, "hello") == "hello-1.0.0-x86-64.raw"

        manifest = bytearray((dest / "SHA256SUMS").read_bytes())
        manifest[0] = ord("0") if manifest[0] != ord("0") else ord("1")
        (dest / "SHA256SUMS").write_bytes(bytes(manifest))
        root, defs = host(tmp_path / "bad", "hello", dest / "hello.conf")
        proc = sysupdate.run(defs, root, "update", keyring=keyring)
        assert proc.returncode != 0
        assert "Signature verification failed" in proc.stdout + proc.stderr
        assert installed(root, "hello") == []
        assert not (root / "etc/extensions/hello.raw").exists()


def test_stream_conf_takes_patch_updates_only(tmp_path, sysupdate):
    dest = tmp_path / "pub"
    dest.mkdir()
    with serve(dest) as url:
        make_image(tmp_path, "hello", "1.0.0", stream="1")
        publish_dir(tmp_path, dest, url)
        root, defs = host(tmp_path, "hello", dest / "hello-1.conf")
        update(sysupdate, defs, root)
        assert current(root, "hello") == "hello-1.0.0-x86-64.raw"

        make_image(tmp_path, "hello", "2.0.0", stream="2")
        publish_dir(tmp_path, dest, url)
        update(sysupdate, defs, root)
        assert current(root, "hello") == "hello-1.0.0-x86-64.raw"

        make_image(tmp_path, "hello", "1.0.1", stream="1")
        publish_dir(tmp_path, dest, url)
        update(sysupdate, defs, root)
        assert current(root, "hello") == "hello-1.0.1-x86-64.raw"
        assert "hello-2.0.0-x86-64.raw" not in installed(root, "hello")


def test_noop_conf_lets_a_plain_update_succeed(tmp_path, sysupdate):
    dest = tmp_path / "pub"
    make_image(tmp_path, "hello", "1.0.0")
    publish_dir(tmp_path, dest, "http://127.0.0.1:9/")
    empty = tmp_path / "empty"
    empty.mkdir()
    root = tmp_path / "root"
    root.mkdir()
    # the failure noop.conf works around
    assert sysupdate.run(empty, root, "update").returncode != 0
    _, defs = host(tmp_path, "hello", dest / "noop.conf")
    update(sysupdate, defs, root)


@requires_sysext
def test_installed_image_merges_with_systemd_sysext(tmp_path, sysupdate):
    dest = tmp_path / "pub"
    dest.mkdir()
    with serve(dest) as url:
        make_image(tmp_path, "hello", "1.2.3")
        publish_dir(tmp_path, dest, url)
        root, defs = host(tmp_path / "host", "hello", dest / "hello.conf")
        update(sysupdate, defs, root)
    installed_image = (root / "etc/extensions/hello.raw").resolve()
    sysext_root = make_root(tmp_path / "sysext")
    done = run_merged(sysext_root, {"hello": installed_image}, '"$ROOT/usr/bin/hello"')
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "hello 1.2.3"


def test_a_percent_encoded_base_url_survives_systemds_specifiers(tmp_path, sysupdate):
    """`my%20dir` would be read as the specifier `%2` by sysupdate's unit-file parser: the
    published transfer file must say `my%%20dir`, and the real sysupdate then finds it."""
    served = tmp_path / "srv"
    dest = served / "my dir"
    dest.mkdir(parents=True)
    with serve(served) as url:
        make_image(tmp_path, "hello", "1.0.0")
        base = release.parse_config(f'base_url = "{url}my%20dir/"', "release.toml").base_url
        publish_dir(tmp_path, dest, base)
        assert f"Path={url}my%%20dir/\n" in (dest / "hello.conf").read_text()
        root, defs = host(tmp_path, "hello", dest / "hello.conf")
        update(sysupdate, defs, root)
        assert current(root, "hello") == "hello-1.0.0-x86-64.raw"


def refused(su: Sysupdate, defs: Path, root: Path, keyring: Path) -> bool:
    proc = su.run(defs, root, "update", keyring=keyring)
    return proc.returncode != 0 and "Signature verification failed" in proc.stdout + proc.stderr


def test_key_rotation_keeps_hosts_updating(tmp_path, sysupdate, gpg_key, new_gpg_key):
    """docs/release.md, 'Rotating the signing key', with the real sysupdate: phase 1 ships a
    keyring with both keys and still signs with the old one; phase 2 signs with the new one.
    A host with only the old key keeps updating through phase 1 and is refused after phase
    2; a host that installed the phase-1 keyring updates throughout."""
    old, new = gpg_key, new_gpg_key
    both = {"BAKERY_SIGNING_KEY": old.armored_secret + new.armored_secret}
    dest = tmp_path / "pub"
    dest.mkdir()
    old_ring, both_ring = tmp_path / "old.gpg", tmp_path / "both.gpg"
    with serve(dest) as url:
        with sign.signer_from_env(both) as signer:
            make_image(tmp_path, "hello", "1.0.0")
            publish_dir(tmp_path, dest, url, signer, fingerprint=old.fingerprint)
            shutil.copyfile(dest / "bakery-signing-key.gpg", old_ring)   # what hosts were given
            a_root, a_defs = host(tmp_path / "a", "hello", dest / "hello.conf")
            b_root, b_defs = host(tmp_path / "b", "hello", dest / "hello.conf")
            update(sysupdate, a_defs, a_root, old_ring)
            update(sysupdate, b_defs, b_root, old_ring)

            # phase 1: announce; host a keeps its old keyring, host b installs the new one
            make_image(tmp_path, "hello", "1.1.0")
            publish_dir(tmp_path, dest, url, signer, fingerprint=old.fingerprint,
                        next_key=new.fingerprint)
            shutil.copyfile(dest / "bakery-signing-key.gpg", both_ring)
            assert set(sign.keyring_fingerprints(both_ring.read_bytes())) == {old.fingerprint,
                                                                               new.fingerprint}
            update(sysupdate, a_defs, a_root, old_ring)
            update(sysupdate, b_defs, b_root, both_ring)
            assert current(a_root, "hello") == current(b_root, "hello") == "hello-1.1.0-x86-64.raw"

            # phase 2: switch; only the host with the new keyring follows
            make_image(tmp_path, "hello", "1.2.0")
            publish_dir(tmp_path, dest, url, signer, fingerprint=old.fingerprint,
                        next_key=new.fingerprint, rotate_key=True)
            update(sysupdate, b_defs, b_root, both_ring)
            assert current(b_root, "hello") == "hello-1.2.0-x86-64.raw"
            assert refused(sysupdate, a_defs, a_root, old_ring)
            assert current(a_root, "hello") == "hello-1.1.0-x86-64.raw"

        # after: the configuration names the new key, the keyring holds only it
        with sign.signer_from_env({"BAKERY_SIGNING_KEY": new.armored_secret}) as signer:
            make_image(tmp_path, "hello", "1.3.0")
            publish_dir(tmp_path, dest, url, signer, fingerprint=new.fingerprint)
            update(sysupdate, b_defs, b_root, both_ring)
            assert current(b_root, "hello") == "hello-1.3.0-x86-64.raw"
            new_ring = tmp_path / "new.gpg"   # a host provisioned now gets only the new key
            shutil.copyfile(dest / "bakery-signing-key.gpg", new_ring)
            assert sign.keyring_fingerprints(new_ring.read_bytes()) == (new.fingerprint,)
            c_root, c_defs = host(tmp_path / "c", "hello", dest / "hello.conf")
            update(sysupdate, c_defs, c_root, new_ring)
            assert current(c_root, "hello") == "hello-1.3.0-x86-64.raw"


def test_a_double_signature_is_refused_by_a_host_lacking_one_key(tmp_path, sysupdate, gpg_key,
                                                                 new_gpg_key):
    """Why a rotation does not sign with both keys at once: gpg (and so systemd-pull) fails
    a signature file when any of its signatures is by a key it lacks."""
    old, new = gpg_key, new_gpg_key
    dest = tmp_path / "pub"
    dest.mkdir()
    with serve(dest) as url:
        make_image(tmp_path, "hello", "1.0.0")
        with sign.signer_from_env({"BAKERY_SIGNING_KEY": old.armored_secret}) as signer:
            publish_dir(tmp_path, dest, url, signer)
            by_old = (dest / "SHA256SUMS.gpg").read_bytes()
        with sign.signer_from_env({"BAKERY_SIGNING_KEY": new.armored_secret}) as signer:
            by_new = sign.sign(signer, (dest / "SHA256SUMS").read_bytes())
        (dest / "SHA256SUMS.gpg").write_bytes(by_old + by_new)
        old_ring, both_ring = tmp_path / "old.gpg", tmp_path / "both.gpg"
        old_ring.write_bytes(old.public)
        both_ring.write_bytes(old.public + new.public)
        root, defs = host(tmp_path / "old", "hello", dest / "hello.conf")
        assert refused(sysupdate, defs, root, old_ring)
        assert installed(root, "hello") == []
        root, defs = host(tmp_path / "both", "hello", dest / "hello.conf")
        update(sysupdate, defs, root, both_ring)
        assert current(root, "hello") == "hello-1.0.0-x86-64.raw"
