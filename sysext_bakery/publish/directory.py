"""Publishing a release: the side effects of `doit release`.

`publish_directory` fills a flat, static-web-servable directory: images first (copied
under temp names, verified while streaming, renamed), then the rendered text files, then
SHA256SUMS and its signature, so a reader never sees a manifest naming a missing file.
A lock file keeps two publishers off one directory; a second run changes nothing.
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime
import fcntl
import hashlib
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Mapping

from sysext_bakery.model import naming
from sysext_bakery.model.url import BaseUrl, parse_base_url
from sysext_bakery.publish import sysupdate
from sysext_bakery.build import sums
from sysext_bakery.errors import BakeryError
from sysext_bakery.files import (discard, disk_errors, file_digest, forget, make_temp_file,
                                 stage_file, write_atomic)
from sysext_bakery.inputs import read_bounded, read_text
from sysext_bakery.build.provenance import git_revision, revision_problem
from sysext_bakery.publish import keys
from sysext_bakery.publish.sign import (Signer, export_public_keys, keyring_fingerprints, sign,
                                        signature_valid, signer_from_env)
from sysext_bakery.publish.sysupdate import PublishedImage, ReleaseConfig

LOCK = ".publish.lock"
TEMPLATES = ("transfer.conf", "noop.conf")


@dataclass(frozen=True)
class PublishReport:
    dest: Path
    copied: tuple[str, ...]       # image files newly published
    written: tuple[str, ...]      # other files created or changed
    removed: tuple[str, ...] = ()

    @property
    def changed(self) -> bool:
        return bool(self.copied or self.written or self.removed)

    def summary(self) -> str:
        if not self.changed:
            return f"nothing to publish: {self.dest} is up to date"
        parts = [f"published {len(self.copied)} image(s)", f"wrote {len(self.written)} file(s)"]
        if self.removed:
            parts.append(f"removed {', '.join(self.removed)}")
        return f"{self.dest}: " + ", ".join(parts)


def copy_verified(src: Path, dest: Path, sha256: str) -> None:
    """Copy an image under a temp name, hashing while streaming; rename only if it matches."""
    with disk_errors(dest.parent, f"publishing {dest.name}"):
        _copy_verified(src, dest, sha256)


def _copy_verified(src: Path, dest: Path, sha256: str) -> None:
    digest = hashlib.sha256()
    fd, tmp = make_temp_file(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp")
    try:
        with src.open("rb") as fin, os.fdopen(fd, "wb") as fout:
            while chunk := fin.read(1 << 20):
                digest.update(chunk)
                fout.write(chunk)
            fout.flush()
            os.fsync(fout.fileno())
        if digest.hexdigest() != sha256:
            raise BakeryError(f"{src} has sha256 {digest.hexdigest()} but its provenance "
                              f"file says {sha256}", sysupdate.repack_hint(src.stem))
        os.chmod(tmp, 0o644)
        os.replace(tmp, dest)
        forget(tmp)
    except BaseException:
        discard(tmp)
        raise


@contextlib.contextmanager
def locked(dest: Path) -> Iterator[None]:
    with open(dest / LOCK, "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise BakeryError(f"{dest / LOCK} is locked: another publisher is writing {dest}",
                              "wait for it to finish, then run again") from None
        yield


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ---- the publish directory ---------------------------------------------------------------

def built_images(images_dir: Path, state_dir: Path) -> list[tuple[PublishedImage, Path]]:
    """(image, .raw path) for every provenance file in state_dir/images whose image exists."""
    found = []
    for prov in sorted((state_dir / "images").glob("*.json")):
        image = sysupdate.parse_provenance(read_bounded(prov, str(prov), "image provenance file"),
                                           str(prov))
        raw = images_dir / image.filename
        if raw.is_file():
            found.append((image, raw))
    return found


def load_templates(templates_dir: Path) -> dict[str, str]:
    missing = [t for t in TEMPLATES if not (templates_dir / t).is_file()]
    if missing:
        raise BakeryError(f"{templates_dir}: missing template(s) {', '.join(missing)}",
                          "restore them from git: git checkout -- release/templates")
    return {t: read_text(templates_dir / t, what="template") for t in TEMPLATES}


def publish_directory(built: list[tuple[PublishedImage, Path]], dest: Path,
                      config: ReleaseConfig, templates: Mapping[str, str],
                      signer: Signer | None, revision: str | None,
                      allow_unsigned: bool = False, rotate_key: bool = False) -> PublishReport:
    """Publish `built` (image, .raw path) into `dest`. `revision` stands in for the git
    revision of images whose provenance does not record one. Which key signs, and which
    keys the published keyring holds, follow `keys.plan` (`allow_unsigned`, `rotate_key`)."""
    if revision is not None and (problem := revision_problem(revision)):
        # it would go into index.json, which the next publish would refuse to read back
        raise BakeryError(f"publishing {dest}: {problem}", "pass the commit git rev-parse HEAD "
                          "prints, or None")
    dest.mkdir(parents=True, exist_ok=True)
    with locked(dest):
        return _publish_locked(built, dest, config, templates, signer, revision, allow_unsigned,
                               rotate_key)


def _key_plan(dest: Path, config: ReleaseConfig, signer: Signer | None, allow_unsigned: bool,
              rotate_key: bool) -> tuple[Signer | None, tuple[str, ...]]:
    """The signer (with the key that is to sign) and the fingerprints of the keyring."""
    key_file = dest / sysupdate.PUBLIC_KEY
    published = keyring_fingerprints(sysupdate.read_published(key_file)) if key_file.is_file() else ()
    signed_before = key_file.exists() or (dest / sysupdate.SIGNATURE).exists()
    if signer is not None and signer.available:
        signer = dataclasses.replace(signer, key=keys.choose_key(
            signer.available, config.signing_key, config.next_signing_key, rotate_key))
    plan = keys.plan(config.signing_key, config.next_signing_key,
                     signer.key if signer else None, published, signed_before, str(dest),
                     allow_unsigned, rotate_key)
    return (signer if plan.signer else None), plan.keyring


def _publish_locked(built, dest: Path, config: ReleaseConfig, templates, signer,
                    revision, allow_unsigned: bool, rotate_key: bool) -> PublishReport:
    for stale in dest.glob(".*.tmp"):   # left by a killed run; under the lock nobody writes them
        stale.unlink()
    signed_files = [n for n in (sysupdate.SIGNATURE, sysupdate.PUBLIC_KEY) if (dest / n).exists()]
    signer, keyring = _key_plan(dest, config, signer, allow_unsigned, rotate_key)
    built = [(_with_build_facts(image, raw, revision), raw) for image, raw in built]
    sums_path, index_path = dest / sysupdate.SUMS, dest / sysupdate.INDEX
    published = sums.parse(sysupdate.read_published(sums_path), str(sums_path)) if sums_path.exists() else {}
    index = ({i.filename: i for i in sysupdate.parse_index(sysupdate.read_published(index_path), str(index_path))}
             if index_path.exists() else {})
    present, ignored = _present_images(dest, published, index, built)
    for name in ignored:
        print(f"warning: {dest / name}: no build provenance, {sysupdate.INDEX} or {sysupdate.SUMS} "
              "entry vouches for these bytes: left alone, not published", file=sys.stderr)
    new = [(image, raw) for image, raw in built if sysupdate.check_immutable(
        image.filename, present[image.filename].sha256 if image.filename in present else None,
        image.sha256)]
    images = {**present, **{image.filename: image for image, _ in new}}
    public_key = export_public_keys(signer, keyring) if signer else None
    # rendered and signed before anything is copied: a name clash or a gpg that cannot sign
    # (a protected key without its passphrase) fails with the directory untouched
    rendered = sysupdate.render_release(images.values(), config, templates, public_key)
    manifest = sums.render({n: i.sha256 for n, i in images.items()}).encode()
    signature = _signature(dest, signer, manifest) if signer else None

    for image, raw in new:
        copy_verified(raw, dest / image.filename, image.sha256)
    if new:
        _fsync_dir(dest)
    files = {name: text.encode() for name, text in rendered.files.items()}
    if public_key:
        files[sysupdate.PUBLIC_KEY] = public_key
    written = [name for name, data in sorted(files.items()) if write_atomic(dest / name, data)]

    written += _write_manifest(dest, manifest, signature)
    removed = []
    if signer is None:   # a signature of another manifest would only mislead
        for name in signed_files:
            (dest / name).unlink()
            removed.append(name)
    return PublishReport(dest, tuple(image.filename for image, _ in new), tuple(written),
                         tuple(removed))


def _with_build_facts(image: PublishedImage, raw: Path, revision: str | None) -> PublishedImage:
    """The provenance's revision and build time; for an image packed before the pack step
    recorded them, the revision being published and the image's mtime."""
    built_at = datetime.datetime.fromtimestamp(raw.stat().st_mtime, datetime.UTC)
    return dataclasses.replace(image, revision=image.revision or revision,
                               built=image.built or built_at.strftime("%Y-%m-%dT%H:%M:%SZ"))


def _present_images(dest: Path, published: Mapping[str, str], index: Mapping[str, PublishedImage],
                    built: list[tuple[PublishedImage, Path]]
                    ) -> tuple[dict[str, PublishedImage], list[str]]:
    """The images in `dest` that stay published (by file name), and the .raw files left alone.

    An image in SHA256SUMS stays. One that is not was copied by a run that stopped before
    the manifest (renamed into place only after verification): it is adopted if a build
    record or index.json vouches for exactly its bytes. Any other file is nobody's."""
    by_file = {image.filename: image for image, _ in built}
    present: dict[str, PublishedImage] = {}
    ignored: list[str] = []
    for path in sorted(dest.glob("*.raw")):
        name = path.name
        record = index.get(name) or by_file.get(name)
        if name in published:
            sha = published[name]
        elif record is None:
            ignored.append(name)
            continue
        else:
            sha = file_digest(path)
            if name in by_file:   # the same name built with other bytes: never replaced
                sysupdate.check_immutable(name, sha, by_file[name].sha256)
            elif sha != record.sha256:
                ignored.append(name)
                continue
        if record is None or record.sha256 != sha:   # listed, but nothing more is known
            parsed = naming.parse_image_filename(name)
            if parsed is None:
                ignored.append(name)
                continue
            record = PublishedImage(*parsed, sha256=sha, size=path.stat().st_size)
        present[name] = record
    return present, ignored


def _signature(dest: Path, signer: Signer, manifest: bytes) -> bytes | None:
    """A signature of `manifest` by the signer's key: the published one if it is that
    (kept, so a run with nothing new changes nothing), else a new one."""
    sig_path = dest / sysupdate.SIGNATURE
    current = sysupdate.read_published(sig_path) if sig_path.is_file() else b""
    own_key = export_public_keys(signer, (signer.key,))
    if current and signature_valid(manifest, current, own_key):
        return None
    return sign(signer, manifest)


def _write_manifest(dest: Path, data: bytes, signature: bytes | None) -> list[str]:
    """SHA256SUMS and its signature (None: the published one stays), both staged first and
    then renamed back to back: a verifying host fetches the two together, so the pair is
    only mismatched for the moment between the renames (see docs/release.md). Returns the
    names written."""
    sums_path, sig_path = dest / sysupdate.SUMS, dest / sysupdate.SIGNATURE
    changes = {}
    if not sums_path.is_file() or sysupdate.read_published(sums_path) != data:
        changes[sums_path] = data
    if signature is not None:
        changes[sig_path] = signature
    staged: list[tuple[Path, str]] = []
    try:
        for path, content in changes.items():
            staged.append((path, stage_file(path, content)))
        with sums.locked(dest):   # the lock of every SHA256SUMS rewrite, also in a build tree
            for path, tmp in staged:
                os.replace(tmp, path)
                forget(tmp)
    except BaseException:
        for _, tmp in staged:
            discard(tmp)      # those not renamed yet (a renamed one is forgotten)
        raise
    return [path.name for path, _ in staged]


# ---- the release command ------------------------------------------------------------------

def run_release(root: Path, dest: str, base_url: str = "", github: bool = False,
                repo: str = "", allow_unsigned: bool = False,
                rotate_key: bool = False) -> PublishReport:
    """`doit release`: publish build/images into `dest` (relative to `root`), then
    optionally to GitHub Releases. `allow_unsigned` publishes unsigned although the
    configuration or the directory say signed; `rotate_key` signs with the announced next
    key (docs/release.md, 'Rotating the signing key')."""
    config_path = root / "release/release.toml"
    config = release_config(config_path, base_url)
    templates = load_templates(root / "release/templates")
    built = built_images(root / "build/images", root / "build/state")
    revision = git_revision(root)
    with signer_from_env() as signer:
        check_transport(config.base_url, signed=signer is not None)
        report = publish_directory(built, root / dest, config, templates, signer, revision,
                                   allow_unsigned, rotate_key)
        print(report.summary())
        if github:
            from sysext_bakery.publish.github import publish_github
            publish_github(root / dest, repo or config.github_repo, config, root)
    return report


def check_transport(base_url: str, signed: bool) -> None:
    """Plain http is only safe when hosts verify a signed SHA256SUMS (Verify=yes)."""
    if not BaseUrl(base_url).insecure:
        return
    if not signed:
        raise BakeryError(f"base_url {base_url} is plain http and the release is unsigned: "
                          "anyone on the path could serve hosts other images",
                          "serve it over https, or sign the release (BAKERY_SIGNING_KEY)")
    print(f"WARNING: base_url {base_url} is plain http; hosts rely on the signature alone",
          file=sys.stderr)


def release_config(path: Path, base_url: str = "") -> ReleaseConfig:
    if not path.is_file():
        raise BakeryError(f"{path}: missing", "create it with base_url = \"https://…/\"")
    config = sysupdate.parse_config(read_bounded(path, str(path), 'release configuration'), str(path))
    if base_url is not None and base_url != "":
        config = dataclasses.replace(config, base_url=parse_base_url(base_url, "--base-url").url)
    return config
