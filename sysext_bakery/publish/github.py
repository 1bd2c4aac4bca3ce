"""Publishing to GitHub Releases: per image version a release `<name>-<version>`, plus a
metadata release with the aggregated SHA256SUMS and all transfer files. Only the REST
endpoints used here are spoken; the token only ever goes into the Authorization header."""
from __future__ import annotations

import datetime
import email.utils
import hashlib
import os
import time
from pathlib import Path
from typing import Mapping

from sysext_bakery.publish import sysupdate
from sysext_bakery.build import sums
from sysext_bakery.errors import BakeryError
from sysext_bakery.publish.sysupdate import PublishedImage, ReleaseConfig


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
            wait = retry_after_seconds(resp.headers["retry-after"], self.backoff * 2 ** (attempt - 1))
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
        """Upload `files` (asset name -> content) to `rel`, images first and SHA256SUMS(.gpg)
        last, so the release never lists a manifest before its images. Assets whose sha256
        already matches are skipped; a different text asset is replaced, a different image
        is refused. Returns the uploaded names."""
        existing = {a["name"]: a for a in self.assets(rel)}
        upload_url = rel["upload_url"].split("{", 1)[0]
        uploaded = []
        for name in sorted(files, key=upload_order):
            content = files[name]
            data = content.read_bytes() if isinstance(content, Path) else content
            asset = existing.get(name)
            if asset and not _replace_asset(rel, asset, data):
                continue
            if asset:
                self.request("DELETE", f"{self.api}/repos/{self.repo}/releases/assets/{asset['id']}",
                             ok=(204, 404))
            self.request("POST", upload_url, ok=(201,), params={"name": name}, data=data,
                         headers={"Content-Type": "application/octet-stream"})
            uploaded.append(name)
        return uploaded


def upload_order(name: str) -> tuple[int, str]:
    """Images, then the other files, then SHA256SUMS, then its signature."""
    last = {sysupdate.SUMS: 2, sysupdate.SIGNATURE: 3}
    return (0 if name.endswith(".raw") else last.get(name, 1), name)


def _replace_asset(rel: dict, asset: dict, data: bytes) -> bool:
    """Whether `asset` must be replaced by `data`; False if it already holds it. A published
    image never changes, on GitHub as in the directory."""
    sha = hashlib.sha256(data).hexdigest()
    digest = asset.get("digest")
    if digest == f"sha256:{sha}":
        return False
    if not asset["name"].endswith(".raw"):
        return True
    if digest is None and asset.get("size") == len(data):
        return False   # a GitHub that gives no digest: the image is there, never replace it
    raise BakeryError(
        f"GitHub release {rel.get('tag_name')}: asset {asset['name']} is already published "
        f"with {digest or 'size ' + str(asset.get('size'))}; the local image has sha256:{sha}",
        "a published image never changes: bump the version (or delete the asset by hand if "
        "it was never served)")


def retry_after_seconds(value: str, default: float) -> float:
    """A Retry-After header: delay seconds or an HTTP date (RFC 9110); `default` if neither."""
    try:
        return float(value)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return default
    if when.tzinfo is None:   # "-0000": UTC by RFC 5322
        when = when.replace(tzinfo=datetime.timezone.utc)
    return when.timestamp() - time.time()


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
    try:
        repo.create_tag(tag, ref=ref, message=message)
    except git.GitCommandError as e:
        # GitPython wraps git's message as "\n  stderr: '...'"; its last line is the reason
        lines = (e.stderr or str(e)).strip().removeprefix("stderr:").strip(" '\n").splitlines()
        detail = lines[-1] if lines else f"exit status {e.status}"
        raise BakeryError(
            f"git tag {tag} in {root} failed: {detail}",
            "an annotated tag needs a committer identity; if git has none (as on a fresh CI "
            "runner), set GIT_COMMITTER_NAME and GIT_COMMITTER_EMAIL, or git config "
            "user.name / user.email") from None
    return True


def publish_github(dest: Path, repo: str | None, config: ReleaseConfig, root: Path,
                   env: Mapping[str, str] = os.environ) -> list[str]:
    """Per image version a release `<name>-<version>` with its images, their SHA256SUMS and
    the transfer files `<name>` and `<name>-<stream>` of its stream; plus the metadata release with the aggregated SHA256SUMS
    (+ signature), every transfer file, Butane snippet (+ its .ign), key and index.json.
    Returns the uploaded asset names as `<tag>/<name>`."""
    if not repo:
        raise BakeryError("no GitHub repository to publish to",
                          "pass --repo owner/name or set [github] repo in release/release.toml")
    token = env.get("GITHUB_TOKEN")
    if not token:
        raise BakeryError("GITHUB_TOKEN is not set", "export a token that may write releases")
    client = GitHub(repo, token, env.get("GITHUB_API_URL", "https://api.github.com"))
    index_path, sums_path = dest / sysupdate.INDEX, dest / sysupdate.SUMS
    if not index_path.is_file() or not sums_path.is_file():
        raise BakeryError(f"{dest} holds no published release", "run doit release first")
    images = sysupdate.parse_index(index_path.read_text(), str(index_path))
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
        files[sysupdate.SUMS] = sums.render({i.filename: all_sums[i.filename] for i in group
                                           if i.filename in all_sums}).encode()
        for stem in [name, *sorted({f"{name}-{i.stream}" for i in group if i.stream})]:
            for conf in (dest / f"{stem}.conf", dest / f"{stem}.transfer"):
                if conf.is_file():
                    files[conf.name] = conf
        rel = client.release(tag, revision, f"{name} {version} system extension images")
        uploaded += [f"{tag}/{n}" for n in client.sync(rel, files)]

    meta_names = [sysupdate.SUMS, sysupdate.SIGNATURE, sysupdate.PUBLIC_KEY, sysupdate.INDEX]
    meta = {p.name: p for p in dest.iterdir() if p.is_file() and (
        p.name in meta_names or p.suffix in (".conf", ".transfer") or p.name.endswith((".butane.yaml", ".ign")))}
    rel = client.release(config.github_metadata_tag, None,
                         "Aggregated SHA256SUMS and systemd-sysupdate transfer files")
    uploaded += [f"{config.github_metadata_tag}/{n}" for n in client.sync(rel, meta)]
    print(f"GitHub {repo}: uploaded {len(uploaded)} asset(s)" if uploaded
          else f"GitHub {repo}: nothing to upload")
    return uploaded
