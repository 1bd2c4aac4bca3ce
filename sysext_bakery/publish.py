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
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Mapping

from . import release, sums
from .errors import BakeryError
from .files import file_digest, write_atomic
from .release import PublishedImage, ReleaseConfig

LOCK = ".publish.lock"
TEMPLATES = ("transfer.conf", "noop.conf", "butane.yaml", "butane-keyring.yaml")


@dataclass(frozen=True)
class Signer:
    """A gpg key that signs SHA256SUMS; `gnupghome` None means the user's own keyring."""
    key: str                      # key id or fingerprint
    gnupghome: Path | None = None
    passphrase: str | None = None


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


# ---- signing -----------------------------------------------------------------------------

@contextlib.contextmanager
def signer_from_env(env: Mapping[str, str] = os.environ) -> Iterator[Signer | None]:
    """BAKERY_SIGNING_KEY (an armored exported secret key, imported into a temporary
    GNUPGHOME) or BAKERY_SIGNING_KEY_ID (a key in the user's keyring); None if neither.
    BAKERY_SIGNING_PASSPHRASE unlocks a protected key."""
    passphrase = env.get("BAKERY_SIGNING_PASSPHRASE")
    if env.get("BAKERY_SIGNING_KEY"):
        with tempfile.TemporaryDirectory(prefix="bakery-gnupg-") as home:
            os.chmod(home, 0o700)
            _gpg(Signer("", Path(home)), "--import", data=env["BAKERY_SIGNING_KEY"].encode(),
                 what="importing BAKERY_SIGNING_KEY")
            listing = _gpg(Signer("", Path(home)), "--list-secret-keys", "--with-colons",
                           what="listing the imported key").decode()
            fingerprints = [line.split(":")[9] for line in listing.splitlines()
                            if line.startswith("fpr:")]
            if not fingerprints:
                raise BakeryError("BAKERY_SIGNING_KEY holds no secret key",
                                  "export it with: gpg --armor --export-secret-keys KEYID")
            yield Signer(fingerprints[0], Path(home), passphrase)
    elif env.get("BAKERY_SIGNING_KEY_ID"):
        yield Signer(env["BAKERY_SIGNING_KEY_ID"], None, passphrase)
    else:
        yield None


def _gpg(signer: Signer, *args: str, data: bytes = b"", what: str) -> bytes:
    env = dict(os.environ)
    if signer.gnupghome:
        env["GNUPGHOME"] = str(signer.gnupghome)
    cmd = ["gpg", "--batch", "--no-tty", "--quiet"]
    if signer.passphrase is not None:
        # the passphrase goes first on stdin, the data follows
        cmd += ["--pinentry-mode", "loopback", "--passphrase-fd", "0"]
        data = signer.passphrase.encode() + b"\n" + data
    proc = subprocess.run([*cmd, *args], input=data, env=env, capture_output=True)
    if proc.returncode != 0:
        raise BakeryError(f"gpg failed {what}: {proc.stderr.decode(errors='replace').strip()}",
                          "check BAKERY_SIGNING_KEY / BAKERY_SIGNING_KEY_ID and the passphrase")
    return proc.stdout


def export_public_key(signer: Signer) -> bytes:
    key = _gpg(signer, "--export", signer.key, what=f"exporting public key {signer.key}")
    if not key:
        raise BakeryError(f"gpg knows no key {signer.key!r}",
                          "set BAKERY_SIGNING_KEY_ID to a key listed by: gpg --list-secret-keys")
    return key


def sign(signer: Signer, data: bytes) -> bytes:
    return _gpg(signer, "--local-user", signer.key, "--detach-sign", "--output", "-",
                data=data, what=f"signing with key {signer.key}")


def signature_valid(signer: Signer, data: bytes, signature: bytes, public_key: bytes) -> bool:
    """Whether `signature` is a good signature of `data` by exactly the published key."""
    with tempfile.TemporaryDirectory(prefix="bakery-verify-") as tmp:
        keyring, sig = Path(tmp, "key.gpg"), Path(tmp, "data.sig")
        keyring.write_bytes(public_key)
        sig.write_bytes(signature)
        proc = subprocess.run(
            ["gpg", "--batch", "--no-tty", "--quiet", "--no-default-keyring",
             "--keyring", str(keyring), "--trust-model", "always", "--verify", str(sig), "-"],
            input=data, capture_output=True, env={**os.environ, "GNUPGHOME": tmp})
        return proc.returncode == 0


# ---- files -------------------------------------------------------------------------------

def copy_verified(src: Path, dest: Path, sha256: str) -> None:
    """Copy an image under a temp name, hashing while streaming; rename only if it matches."""
    digest = hashlib.sha256()
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp")
    try:
        with src.open("rb") as fin, os.fdopen(fd, "wb") as fout:
            while chunk := fin.read(1 << 20):
                digest.update(chunk)
                fout.write(chunk)
            fout.flush()
            os.fsync(fout.fileno())
        if digest.hexdigest() != sha256:
            raise BakeryError(f"{src} has sha256 {digest.hexdigest()} but its provenance "
                              f"file says {sha256}", f"rebuild it: doit build:{src.stem}")
        os.chmod(tmp, 0o644)
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
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
        image = release.parse_provenance(prov.read_text(), str(prov))
        raw = images_dir / image.filename
        if raw.is_file():
            found.append((image, raw))
    return found


def load_templates(templates_dir: Path) -> dict[str, str]:
    missing = [t for t in TEMPLATES if not (templates_dir / t).is_file()]
    if missing:
        raise BakeryError(f"{templates_dir}: missing template(s) {', '.join(missing)}",
                          "restore them from git: git checkout -- release/templates")
    return {t: (templates_dir / t).read_text() for t in TEMPLATES}


def publish_directory(built: list[tuple[PublishedImage, Path]], dest: Path,
                      config: ReleaseConfig, templates: Mapping[str, str],
                      signer: Signer | None, revision: str | None) -> PublishReport:
    dest.mkdir(parents=True, exist_ok=True)
    with locked(dest):
        return _publish_locked(built, dest, config, templates, signer, revision)


def _publish_locked(built, dest: Path, config: ReleaseConfig, templates, signer, revision):
    for stale in dest.glob(".*.tmp"):   # left by a killed run; under the lock nobody writes them
        stale.unlink()
    sums_path, index_path = dest / release.SUMS, dest / release.INDEX
    published = sums.parse(sums_path.read_text(), str(sums_path)) if sums_path.exists() else {}
    index = ({i.filename: i for i in release.parse_index(index_path.read_text(), str(index_path))}
             if index_path.exists() else {})

    # an image already in the directory but not in SHA256SUMS was copied by a run that
    # stopped before the manifest: it is complete (renamed after verification), adopt it
    on_disk = {p.name: p for p in dest.glob("*.raw") if release.parse_image_filename(p.name)}
    known = {name: published.get(name) or file_digest(path) for name, path in on_disk.items()}

    copied: list[str] = []
    for image, raw in built:
        if release.check_immutable(image.filename, known.get(image.filename), image.sha256):
            copy_verified(raw, dest / image.filename, image.sha256)
            copied.append(image.filename)
            known[image.filename] = image.sha256
        if image.filename not in index:
            built_at = datetime.datetime.fromtimestamp(raw.stat().st_mtime, datetime.UTC)
            index[image.filename] = dataclasses.replace(
                image, revision=image.revision or revision,
                built=image.built or built_at.strftime("%Y-%m-%dT%H:%M:%SZ"))
    if copied:
        _fsync_dir(dest)
    for name, sha in known.items():
        if name not in index:   # adopted leftover with no metadata: what its name tells
            path = dest / name
            n, version, arch = release.parse_image_filename(name)
            index[name] = PublishedImage(n, version, arch, sha, path.stat().st_size)
    images = [index[name] for name in sorted(known)]

    written: list[str] = []
    public_key = export_public_key(signer) if signer else None
    rendered = release.render_release(images, config, templates, signed=signer is not None)
    files = {name: text.encode() for name, text in rendered.files.items()}
    if public_key:
        files[release.PUBLIC_KEY] = public_key
    for name, data in sorted(files.items()):
        if write_atomic(dest / name, data):
            written.append(name)

    # last: the manifest, then its signature
    manifest = sums.render(release.merge_sums(published, known, known)).encode()
    if write_atomic(sums_path, manifest):
        written.append(release.SUMS)
    removed: list[str] = []
    sig_path = dest / release.SIGNATURE
    if signer and public_key:
        current = sig_path.read_bytes() if sig_path.exists() else b""
        if not current or not signature_valid(signer, manifest, current, public_key):
            write_atomic(sig_path, sign(signer, manifest))
            written.append(release.SIGNATURE)
    elif sig_path.exists():
        sig_path.unlink()   # a stale signature of another manifest would only mislead
        removed.append(release.SIGNATURE)
    return PublishReport(dest, tuple(copied), tuple(written), tuple(removed))


# ---- the release command ------------------------------------------------------------------

def git_revision(root: Path) -> str | None:
    import git   # GitPython; imported here so the pure parts never need it
    try:
        return git.Repo(root).head.commit.hexsha
    except (git.InvalidGitRepositoryError, git.NoSuchPathError, ValueError):
        return None


def run_release(root: Path, dest: str, base_url: str = "", github: bool = False,
            repo: str = "") -> PublishReport:
    """`doit release`: publish build/images into `dest` (relative to `root`), then
    optionally to GitHub Releases."""
    config_path = root / "release/release.toml"
    config = release_config(config_path, base_url)
    templates = load_templates(root / "release/templates")
    built = built_images(root / "build/images", root / "build/state")
    revision = git_revision(root)
    with signer_from_env() as signer:
        report = publish_directory(built, root / dest, config, templates, signer, revision)
        print(report.summary())
        if github:
            from .github import publish_github
            publish_github(root / dest, repo or config.github_repo, config, root)
    return report


def release_config(path: Path, base_url: str = "") -> ReleaseConfig:
    if not path.is_file():
        raise BakeryError(f"{path}: missing", "create it with base_url = \"https://…/\"")
    config = release.parse_config(path.read_text(), str(path))
    if base_url:
        config = dataclasses.replace(config, base_url=release.with_slash(base_url))
    return config
