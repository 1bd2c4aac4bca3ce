"""Publishing to GitHub Releases: per image version a release `<name>-<version>`, plus a
metadata release with the aggregated SHA256SUMS and all transfer files. Only the REST
endpoints used here are spoken; the token only ever goes into the Authorization header, to
the configured API and the one upload origin it implies (`model/github.upload_origin`): a
release whose `upload_url` points anywhere else is refused before any upload."""
from __future__ import annotations

import hashlib
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from sysext_bakery import run
from sysext_bakery.publish import sysupdate
from sysext_bakery.build import sums
from sysext_bakery.errors import BakeryError
from sysext_bakery.files import file_digest
from sysext_bakery.http import Http, Limits, Reply
from sysext_bakery.model import github as github_api
from sysext_bakery.model.reply import json_field, json_type, parse_json
from sysext_bakery.model.url import redact, url_problem
from sysext_bakery.publish.sysupdate import PublishedImage, ReleaseConfig

PERMISSION_HINT = "check GITHUB_TOKEN's permissions (contents: write) and the repository name"
ANSWER_HINT = ("the server did not answer like GitHub's REST API: check GITHUB_API_URL and any "
               "proxy in between")
UPLOAD_HOST_HINT = ("the token only goes to the upload host of the configured API "
                    "(uploads.github.com for api.github.com, uploads.X for api.X, else the "
                    "API's own host, as for an Enterprise Server's /api/v3): check GITHUB_API_URL and any proxy in between; an answer "
                    "naming another host is broken or tampered with, so nothing was uploaded "
                    "to it")
# The documented fields the publisher reads with [] (the others it reads with .get and
# copes without): checked where each answer arrives, so no KeyError can come later.
RELEASE_FIELDS: dict[str, type] = {"id": int, "upload_url": str}
ASSETS_PER_PAGE = 100     # GitHub's maximum
ASSET_FIELDS: dict[str, type] = {"id": int, "name": str}


@dataclass(frozen=True)
class Content:
    """What one asset must hold: bytes (a text asset), or a file (an image, up to GitHub's
    2 GiB), hashed by a streamed read and uploaded streamed, never read whole."""
    data: bytes | Path
    sha256: str   # hex
    size: int

    @classmethod
    def of(cls, data: bytes | Path) -> Content:
        if isinstance(data, Path):
            return cls(data, file_digest(data), data.stat().st_size)
        return cls(data, hashlib.sha256(data).hexdigest(), len(data))


class GitHub:
    """The few REST endpoints of GitHub Releases the publisher uses. Retries (rate limits,
    5xx on idempotent requests) are http.Http's; the two POSTs are never retried blindly: after
    a failed or ambiguous answer they look whether the release or asset landed."""

    def __init__(self, repo: str, token: str, api: str = github_api.API,
                 attempts: int = 6, backoff: float = 1.0, max_wait: float = 120.0):
        self.repo, self.api = repo, api.rstrip("/")
        if github_api.upload_origin(self.api) is None:
            raise BakeryError(f"GITHUB_API_URL {redact(api)!r} is not an http(s) URL with a host",
                              "unset it for github.com (https://api.github.com), or give your "
                              "GitHub Enterprise's API URL, e.g. https://HOST/api/v3")
        self.attempts, self.backoff = attempts, backoff
        limits = Limits.from_env(retries=attempts - 1, backoff=backoff, max_wait=max_wait)
        self.http = Http(limits=limits, upstream=False, hint=PERMISSION_HINT,
                         headers=github_api.rest_headers(token))

    def request(self, method: str, url: str, ok: tuple[int, ...] = (200,), **kwargs: Any) -> Reply:
        reply = self.http.request(method, url, **kwargs)
        if reply.status not in ok:
            raise self._error(method, url, reply)
        return reply

    def _answer(self, reply: Reply, shape: type, fields: Mapping[str, type]) -> Any:
        """The JSON of a successful answer, of the shape GitHub documents (an object, or a
        list of objects, each with `fields` of their types): anything else, a hostile deeply
        nested answer or one without a field included, is one clear error instead of a
        traceback."""
        where = f"GitHub: {self.http.redact(reply.url)}"
        doc = parse_json(reply.body, where, ANSWER_HINT)
        if shape is list and not isinstance(doc, list):
            raise BakeryError(f"{where}: the answer is a JSON {json_type(doc)}, not an array",
                              ANSWER_HINT)
        # json_field refuses an entry (or answer) that is not an object
        objects = enumerate(doc) if shape is list else [(None, doc)]
        for i, obj in objects:
            of = "the answer" if i is None else f"entry {i} of the answer"
            for key, kind in fields.items():
                json_field(obj, key, kind, where, ANSWER_HINT, of)
        return doc

    def _error(self, method: str, url: str, reply: Reply) -> BakeryError:
        return BakeryError(f"GitHub: {method} {self.http.redact(url)}: HTTP {reply.status}: "
                           f"{self.http.redact(reply.text[:300])}", PERMISSION_HINT)

    def _ensure(self, what: str, post: Any, landed: Any, fields: Mapping[str, type]) -> dict:
        """POST via `post()` until it answers 201 (an object with `fields`), or `landed()`
        finds what an earlier, unanswered or failed attempt created. Only a 5xx, a 422
        (already exists) or a broken connection lead to a look; other answers are errors."""
        refused = False
        for attempt in range(1, self.attempts + 1):
            failure: BakeryError | None = None
            try:
                reply = post()
            except BakeryError as e:
                failure, reply = e, None
            if reply is not None and reply.status == 201:
                return self._answer(reply, dict, fields)
            if reply is not None and reply.status < 500 and reply.status != 422:
                raise self._error("POST", what, reply)
            found = landed()
            if found is not None:
                return found
            if reply is not None and reply.status == 422:
                if refused:   # a second 422 with nothing of ours in the way: a real refusal
                    raise self._error("POST", what, reply)
                refused = True
            if attempt == self.attempts:
                raise failure or self._error("POST", what, reply)   # type: ignore[arg-type]
            wait = min(self.backoff * 2 ** (attempt - 1), self.http.limits.max_wait)
            why = failure.message if failure else f"HTTP {reply.status}"   # type: ignore[union-attr]
            print(f"retrying POST {self.http.redact(what)} in {wait:.2g} s ({why}), "
                  f"attempt {attempt}/{self.attempts - 1}", file=sys.stderr)
            time.sleep(wait)
        raise AssertionError("unreachable")

    def release(self, tag: str, target: str | None, body: str) -> dict:
        """The release tagged `tag`, created if missing."""
        url = f"{self.api}/repos/{self.repo}/releases"

        def existing() -> dict | None:
            reply = self.request("GET", f"{url}/tags/{tag}", ok=(200, 404))
            return self._answer(reply, dict, RELEASE_FIELDS) if reply.status == 200 else None

        found = existing()
        if found is None:
            data = {"tag_name": tag, "name": tag, "body": body}
            if target:
                data["target_commitish"] = target
            found = self._ensure(url, lambda: self.http.request("POST", url, json=data), existing,
                                 RELEASE_FIELDS)
        self.upload_url(found, f"{url}/tags/{tag}")   # refused before anything is uploaded
        return found

    def upload_url(self, rel: dict, where: str) -> str:
        """Where `rel`'s assets go, with the token: its `upload_url` (without the template
        part), a usable URL on the one origin the configured API uploads to
        (`model/github.upload_origin`); else a BakeryError naming `where` and the URL."""
        base = upload_base(rel)
        if problem := url_problem(base, schemes=("https", "http")):
            raise BakeryError(f"GitHub: {self.http.redact(where)}: the release's 'upload_url' "
                              f"is unusable: {self.http.redact(problem)}", ANSWER_HINT)
        if problem := github_api.upload_problem(base, self.api):
            raise BakeryError(f"GitHub: {self.http.redact(where)}: the release's 'upload_url' "
                              f"{self.http.redact(base)!r} is refused (the token would go "
                              f"there): {self.http.redact(problem)}", UPLOAD_HOST_HINT)
        return base

    def assets(self, rel: dict) -> list[dict]:
        found, page = [], 1
        while True:
            batch = self._answer(self.request(
                "GET", f"{self.api}/repos/{self.repo}/releases/{rel['id']}/assets",
                params={"per_page": ASSETS_PER_PAGE, "page": page}), list, ASSET_FIELDS)
            found += batch
            if len(batch) < ASSETS_PER_PAGE:
                return found
            page += 1

    def sync(self, rel: dict, files: Mapping[str, bytes | Path]) -> list[str]:
        """Upload `files` (asset name -> bytes, or a file streamed from disk) to `rel`,
        images first and SHA256SUMS(.gpg) last, so the release never lists a manifest before its images. Assets whose sha256
        already matches are skipped; a different text asset is replaced, a different image
        is refused. Returns the uploaded names."""
        upload_url = self.upload_url(rel, f"{self.api}/repos/{self.repo}/releases/{rel['id']}")
        existing = {a["name"]: a for a in self.assets(rel)}
        uploaded = []
        for name in sorted(files, key=upload_order):
            content = Content.of(files[name])
            asset = existing.get(name)
            if asset and not _replace_asset(rel, asset, content):
                continue
            if asset:
                self.request("DELETE", f"{self.api}/repos/{self.repo}/releases/assets/{asset['id']}",
                             ok=(204, 404))
            self._upload(rel, upload_url, name, content)
            uploaded.append(name)
        return uploaded

    def prune(self, rel: dict, keep: set[str]) -> list[str]:
        """Delete the assets of `rel` not named in `keep` (a signature or transfer file that
        is no longer published); returns their names."""
        stale = sorted((a["name"], a["id"]) for a in self.assets(rel) if a["name"] not in keep)
        for _, asset_id in stale:
            self.request("DELETE", f"{self.api}/repos/{self.repo}/releases/assets/{asset_id}",
                         ok=(204, 404))
        return [name for name, _ in stale]

    def _upload(self, rel: dict, upload_url: str, name: str, content: Content) -> dict:
        """Upload one asset. A retried upload that had landed would meet a 422 (name taken),
        so after a failure the assets are listed: ours, complete, counts as uploaded; a
        broken leftover of ours is deleted before the next try. A file is sent streamed, and
        each attempt opens it afresh (`Http.request`), so a retry after a body cut off midway
        sends it whole again."""
        sha = "sha256:" + content.sha256

        def landed() -> dict | None:
            asset = next((a for a in self.assets(rel) if a["name"] == name), None)
            if asset is None:
                return None
            if asset.get("state", "uploaded") == "uploaded" and (
                    asset.get("digest") == sha
                    or (asset.get("digest") is None and asset.get("size") == content.size)):
                return asset
            self.request("DELETE", f"{self.api}/repos/{self.repo}/releases/assets/{asset['id']}",
                         ok=(204, 404))
            return None

        return self._ensure(f"{upload_url}?name={name}", lambda: self.http.request(
            "POST", upload_url, params={"name": name}, data=content.data,
            headers={"Content-Type": "application/octet-stream"}), landed, ASSET_FIELDS)


def upload_base(rel: dict) -> str:
    """A release's upload URL without its RFC 6570 template part (`{?name,label}`)."""
    return rel["upload_url"].split("{", 1)[0]


def upload_order(name: str) -> tuple[int, str]:
    """Images, then the other files, then SHA256SUMS, then its signature."""
    last = {sysupdate.SUMS: 2, sysupdate.SIGNATURE: 3}
    return (0 if name.endswith(".raw") else last.get(name, 1), name)


def _replace_asset(rel: dict, asset: dict, content: Content) -> bool:
    """Whether `asset` must be replaced by `content`; False if it already holds it. A
    published image never changes, on GitHub as in the directory."""
    sha = content.sha256
    digest = asset.get("digest")
    if digest == f"sha256:{sha}":
        return False
    if not asset["name"].endswith(".raw"):
        return True
    if digest is None and asset.get("size") == content.size:
        return False   # a GitHub that gives no digest: the image is there, never replace it
    raise BakeryError(
        f"GitHub release {rel.get('tag_name')}: asset {asset['name']} is already published "
        f"with {digest or 'size ' + str(asset.get('size'))}; the local image has sha256:{sha}",
        "a published image never changes: bump the version (or delete the asset by hand if "
        "it was never served)")


def tag_locally(root: Path, tag: str, revision: str | None, message: str) -> bool:
    """An annotated git tag `tag` at `revision` (else HEAD) unless it exists; True if created."""
    with run.secrets_withheld():   # git must not see GITHUB_TOKEN or the signing key
        return _tag(root, tag, revision, message)


def _tag(root: Path, tag: str, revision: str | None, message: str) -> bool:
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
                   env: Mapping[str, str] | None = None) -> list[str]:
    """Per image version a release `<name>-<version>` with its images, their SHA256SUMS and
    the transfer files `<name>` and `<name>-<stream>` of its stream; plus the metadata release with the aggregated SHA256SUMS
    (+ signature), every transfer file, Butane snippet (+ its .ign), key and index.json.
    Returns the uploaded asset names as `<tag>/<name>`. `env` (default: the process
    environment) supplies GITHUB_TOKEN and GITHUB_API_URL."""
    env = run.environment() if env is None else env
    if not repo:
        raise BakeryError("no GitHub repository to publish to",
                          "pass --repo owner/name or set [github] repo in release/release.toml")
    token = env.get("GITHUB_TOKEN")
    if not token:
        raise BakeryError("GITHUB_TOKEN is not set", "export a token that may write releases")
    client = GitHub(repo, token, env.get("GITHUB_API_URL", github_api.API))
    index_path, sums_path = dest / sysupdate.INDEX, dest / sysupdate.SUMS
    if not index_path.is_file() or not sums_path.is_file():
        raise BakeryError(f"{dest} holds no published release", "run doit release first")
    images = sysupdate.parse_index(sysupdate.read_published(index_path), str(index_path))
    all_sums = sums.parse(sysupdate.read_published(sums_path), str(sums_path))

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
    # the metadata release mirrors the directory: e.g. SHA256SUMS.gpg of a release that
    # went unsigned must not stay next to a SHA256SUMS it never signed
    for name in client.prune(rel, set(meta)):
        print(f"GitHub {repo}: removed {config.github_metadata_tag}/{name} (no longer published)")
    print(f"GitHub {repo}: uploaded {len(uploaded)} asset(s)" if uploaded
          else f"GitHub {repo}: nothing to upload")
    return uploaded
