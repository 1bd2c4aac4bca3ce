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
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Mapping

from . import release, sums
from .errors import BakeryError
from .files import write_atomic
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
    known = {name: published.get(name) or sums.sha256_file(path) for name, path in on_disk.items()}

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


# ---- GitHub Releases ---------------------------------------------------------------------

class GitHub:
    """The few REST endpoints of GitHub Releases the publisher uses, with retries on rate
    limits and 5xx. The token only ever goes into the Authorization header."""

    def __init__(self, repo: str, token: str, api: str = "https://api.github.com",
                 attempts: int = 6, backoff: float = 1.0, max_wait: float = 120.0):
        import requests
        self.repo, self.api = repo, api.rstrip("/")
        self.attempts, self.backoff, self.max_wait = attempts, backoff, max_wait
        self.session = requests.Session()
        self.session.headers.update({"Authorization": f"Bearer {token}",
                                     "Accept": "application/vnd.github+json",
                                     "X-GitHub-Api-Version": "2022-11-28"})

    def request(self, method: str, url: str, ok: tuple[int, ...] = (200,), **kwargs):
        import requests
        for attempt in range(1, self.attempts + 1):
            try:
                resp = self.session.request(method, url, timeout=60, **kwargs)
            except requests.ConnectionError as e:
                if attempt == self.attempts:
                    raise BakeryError(f"GitHub: {method} {url}: {e}",
                                      "check the network and GITHUB_API_URL") from None
                time.sleep(self.backoff * 2 ** (attempt - 1))
                continue
            if resp.status_code in ok:
                return resp
            wait = self._retry_wait(resp, attempt)
            if wait is None or attempt == self.attempts:
                raise BakeryError(
                    f"GitHub: {method} {url}: HTTP {resp.status_code}: {resp.text[:300]}",
                    "check GITHUB_TOKEN's permissions (contents: write) and the repository name")
            time.sleep(wait)
        raise AssertionError("unreachable")

    def _retry_wait(self, resp, attempt: int) -> float | None:
        """Seconds to wait before retrying `resp`, or None if retrying cannot help."""
        limited = resp.status_code == 429 or (
            resp.status_code == 403 and (resp.headers.get("x-ratelimit-remaining") == "0"
                                         or "retry-after" in resp.headers))
        if not limited and resp.status_code < 500:
            return None
        if "retry-after" in resp.headers:
            wait = float(resp.headers["retry-after"])
        elif resp.headers.get("x-ratelimit-remaining") == "0" and "x-ratelimit-reset" in resp.headers:
            wait = float(resp.headers["x-ratelimit-reset"]) - time.time()
        else:
            wait = self.backoff * 2 ** (attempt - 1)
        return min(max(wait, 0.0), self.max_wait)

    def release(self, tag: str, target: str | None, body: str) -> dict:
        """The release tagged `tag`, created if missing."""
        url = f"{self.api}/repos/{self.repo}/releases"
        resp = self.request("GET", f"{url}/tags/{tag}", ok=(200, 404))
        if resp.status_code == 200:
            return resp.json()
        data = {"tag_name": tag, "name": tag, "body": body}
        if target:
            data["target_commitish"] = target
        return self.request("POST", url, ok=(201,), json=data).json()

    def assets(self, rel: dict) -> list[dict]:
        found, page = [], 1
        while True:
            batch = self.request("GET", f"{self.api}/repos/{self.repo}/releases/{rel['id']}/assets",
                                 params={"per_page": 100, "page": page}).json()
            found += batch
            if len(batch) < 100:
                return found
            page += 1

    def sync(self, rel: dict, files: Mapping[str, bytes | Path]) -> list[str]:
        """Upload `files` (asset name -> content) to `rel`; assets whose sha256 already
        matches are skipped, different ones replaced. Returns the uploaded names."""
        existing = {a["name"]: a for a in self.assets(rel)}
        upload_url = rel["upload_url"].split("{", 1)[0]
        uploaded = []
        for name, content in sorted(files.items()):
            data = content.read_bytes() if isinstance(content, Path) else content
            asset = existing.get(name)
            if asset and asset.get("digest") == f"sha256:{hashlib.sha256(data).hexdigest()}":
                continue
            if asset:
                self.request("DELETE", f"{self.api}/repos/{self.repo}/releases/assets/{asset['id']}",
                             ok=(204, 404))
            self.request("POST", upload_url, ok=(201,), params={"name": name}, data=data,
                         headers={"Content-Type": "application/octet-stream"})
            uploaded.append(name)
        return uploaded


def tag_locally(root: Path, tag: str, revision: str | None, message: str) -> bool:
    """An annotated git tag `tag` at `revision` (else HEAD) unless it exists; True if created."""
    import git
    try:
        repo = git.Repo(root)
    except (git.InvalidGitRepositoryError, git.NoSuchPathError):
        return False
    if tag in repo.tags:
        return False
    try:
        ref = repo.commit(revision) if revision else repo.head.commit
    except (ValueError, git.BadName):
        ref = repo.head.commit
    repo.create_tag(tag, ref=ref, message=message)
    return True


def publish_github(dest: Path, repo: str | None, config: ReleaseConfig, root: Path,
                   env: Mapping[str, str] = os.environ) -> list[str]:
    """Per image version a release `<name>-<version>` with its images, their SHA256SUMS and
    the recipe's transfer files; plus the metadata release with the aggregated SHA256SUMS
    (+ signature), every transfer file, Butane snippet, key and index.json.
    Returns the uploaded asset names as `<tag>/<name>`."""
    if not repo:
        raise BakeryError("no GitHub repository to publish to",
                          "pass --repo owner/name or set [github] repo in release/release.toml")
    token = env.get("GITHUB_TOKEN")
    if not token:
        raise BakeryError("GITHUB_TOKEN is not set", "export a token that may write releases")
    client = GitHub(repo, token, env.get("GITHUB_API_URL", "https://api.github.com"))
    index_path, sums_path = dest / release.INDEX, dest / release.SUMS
    if not index_path.is_file() or not sums_path.is_file():
        raise BakeryError(f"{dest} holds no published release", "run doit release first")
    images = release.parse_index(index_path.read_text(), str(index_path))
    all_sums = sums.parse(sums_path.read_text(), str(sums_path))

    uploaded: list[str] = []
    groups: dict[tuple[str, str], list[PublishedImage]] = {}
    for image in images:
        groups.setdefault((image.name, image.version), []).append(image)
    for (name, version), group in sorted(groups.items()):
        tag = f"{name}-{version}"
        revision = group[0].revision
        tag_locally(root, tag, revision, f"sysext {name} {version}")
        files: dict[str, bytes | Path] = {i.filename: dest / i.filename for i in group}
        files[release.SUMS] = sums.render({i.filename: all_sums[i.filename] for i in group
                                           if i.filename in all_sums}).encode()
        for conf in sorted(dest.glob(f"{name}*.conf")) + sorted(dest.glob(f"{name}*.transfer")):
            if conf.stem == name or conf.stem.startswith(f"{name}-"):
                files[conf.name] = conf
        rel = client.release(tag, revision, f"{name} {version} system extension images")
        uploaded += [f"{tag}/{n}" for n in client.sync(rel, files)]

    meta_names = [release.SUMS, release.SIGNATURE, release.PUBLIC_KEY, release.INDEX]
    meta = {p.name: p for p in dest.iterdir() if p.is_file() and (
        p.name in meta_names or p.suffix in (".conf", ".transfer") or p.name.endswith(".butane.yaml"))}
    rel = client.release(config.github_metadata_tag, None,
                         "Aggregated SHA256SUMS and systemd-sysupdate transfer files")
    uploaded += [f"{config.github_metadata_tag}/{n}" for n in client.sync(rel, meta)]
    print(f"GitHub {repo}: uploaded {len(uploaded)} asset(s)" if uploaded
          else f"GitHub {repo}: nothing to upload")
    return uploaded


# ---- doit --------------------------------------------------------------------------------

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
            publish_github(root / dest, repo or config.github_repo, config, root)
    return report


def release_config(path: Path, base_url: str = "") -> ReleaseConfig:
    if not path.is_file():
        raise BakeryError(f"{path}: missing", "create it with base_url = \"https://…/\"")
    config = release.parse_config(path.read_text(), str(path))
    if base_url:
        config = dataclasses.replace(config, base_url=release.with_slash(base_url))
    return config


def doit_tasks(root: Path) -> Iterator[dict]:
    def action(dest: str, base_url: str, github: bool, repo: str):
        from doit.exceptions import TaskFailed
        try:
            run_release(root, dest, base_url, github, repo)
        except BakeryError as e:
            return TaskFailed(str(e))
        return None

    yield {
        "basename": "release",
        "doc": "publish built images with SHA256SUMS(.gpg), sysupdate transfers, Butane "
               "snippets and index.json (--dest DIR, --base-url URL, --github)",
        "actions": [action],
        "params": [
            {"name": "dest", "long": "dest", "type": str, "default": "build/release",
             "help": "directory to publish into (default build/release)"},
            {"name": "base_url", "long": "base-url", "type": str, "default": "",
             "help": "public URL of that directory (default: base_url of release/release.toml)"},
            {"name": "github", "long": "github", "type": bool, "default": False,
             "help": "also publish to GitHub Releases (token from GITHUB_TOKEN)"},
            {"name": "repo", "long": "repo", "type": str, "default": "",
             "help": "owner/name for --github (default: github.repo of release/release.toml)"},
        ],
        "uptodate": [False],
        "verbosity": 2,
    }
