"""Recorded discovery answers for any recipe, derived from its `[upstream]` table, laid out in a
BAKERY_MIRROR tree next to the downloads tests/catalogue.py synthesizes.

For each discovery type the answer has the shape the real upstream gives and sits where the
bakery asks for it (`<root>/HOST/PATH?QUERY`, the query unquoted, which is also where a mirror
*directory* is read); response headers (GitHub's Link paging, the content type) go in a
`<file>.headers.json` beside it, which `MirrorServer` sends with the body:

- github-releases: `GET /repos/R/releases?per_page=100`, newest first, paged by `Link` over
  `/repositories/ID/releases?page=N`, with a newer draft and a newer pre-release that must
  not be pinned. Each release object is the one tests/catalogue.py wrote for the tag's
  `releases/tags/T` (github-digest), so both answers agree on ids and asset digests.
- github-tags / gitlab-tags: the tag lists (GitLab paged by `x-next-page`), plus a tag the
  pattern does not match.
- html-index: an nginx autoindex page linking each version's x86-64 download.
- json-api: HashiCorp's releases API (`[*].version`, filtered, `after=` paging until an empty
  page; enterprise builds and a pre-release mixed in) and Tailscale's `?mode=json` (only the
  newest version is visible there, as upstream).
- kubernetes-schedule: the website's schedule.yaml, one entry per minor, patches newest first,
  the planned `next` patch not yet released.

`nightly_catalogue` puts it together for a whole project: per tracked recipe a set of versions
in several streams around what the lock pins, the downloads (and checksum files, signatures,
digests) for the versions `doit update` must pin, and the discovery answers.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import tomllib
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit

from catalogue import Signer, load_toml, render, sources_for, synthesize
from sysext_bakery.model.version import version_key
from upstream import Upstream

SCHEDULE = "https://raw.githubusercontent.com/kubernetes/website/main/data/releases/schedule.yaml"
GITHUB_API = "https://api.github.com"
GITLAB_API = "https://gitlab.com/api/v4"
NUMBERS = re.compile(r"\d+(?:\.\d+)*")
STAMP = "2025-{month:02d}-{day:02d}T12:00:00.000Z"


# --- writing recorded answers --------------------------------------------------------------

def answer_path(root: Path, url: str) -> Path:
    """Where a mirror tree holds the answer for `url` (a directory URL: its index.html)."""
    parts = urlsplit(url)
    rel = unquote(parts.path) + (f"?{unquote(parts.query)}" if parts.query else "")
    if rel.endswith("/"):
        rel += "index.html"
    return root / parts.netloc / rel.lstrip("/")


def record(up: Upstream, url: str, body: bytes, headers: dict[str, str] | None = None) -> None:
    path = answer_path(up.root, url)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(body)
    if headers:
        path.with_name(path.name + ".headers.json").write_text(json.dumps(headers, indent=1))


def recorded_json(up: Upstream, url: str, doc: object, headers: dict[str, str] | None = None) -> None:
    record(up, url, json.dumps(doc, indent=1).encode(),
           {"Content-Type": "application/json; charset=utf-8", **(headers or {})})


# --- versions ------------------------------------------------------------------------------

def _split(version: str) -> tuple[str, list[int], str]:
    m = NUMBERS.search(version)
    assert m, f"{version!r}: no numbers to vary"
    return version[:m.start()], [int(n) for n in m[0].split(".")], version[m.end():]


def _join(prefix: str, numbers: list[int], suffix: str) -> str:
    return prefix + ".".join(map(str, numbers)) + suffix


def stream_index(data: dict) -> int:
    return 1 if data.get("streams") == "minor" else 0


def stream_key(version: str, index: int) -> str:
    prefix, numbers, _ = _split(version)
    return _join(prefix, numbers[:index + 1], "")


def around(version: str, index: int, streams: int) -> list[str]:
    """`streams` streams going back from `version`'s (the stream number at `index`), two
    releases each: in the first a patch newer than `version` and `version` itself."""
    prefix, numbers, suffix = _split(version)
    last = len(numbers) - 1
    out = []
    for k in range(streams):
        nums = list(numbers)
        if k:
            if last == index:
                break               # no patch level to vary: one stream only
            nums[index] -= k
            if nums[index] < 0:
                if index == 0 or nums[index - 1] == 0:
                    break
                nums[index - 1] -= 1
                nums[index] += 30
        top = numbers[last] + 1 if k == 0 else 3
        for patch in (top, top - 1):
            nums[last] = patch
            out.append(_join(prefix, nums, suffix))
    return out


def newest(versions) -> str:
    return max(versions, key=version_key)


def by_newest(versions) -> list[str]:
    return sorted(set(versions), key=version_key, reverse=True)


def expected_pins(listed: list[str], want: dict, index: int) -> list[str]:
    """What release/versions.toml asks for, from what discovery sees: the exact versions,
    the newest for "latest", the newest of each of the newest N streams; nothing held."""
    exact = [v for v in want.get("versions", []) if v != "latest"]
    held = set(want.get("hold", []))
    usable = [v for v in listed if v not in held and stream_key(v, index) not in held]
    targets = list(exact)
    if "latest" in want.get("versions", []) and usable:
        targets.append(newest(usable))
    seen: list[str] = []
    for v in by_newest(usable):
        key = stream_key(v, index)
        if key not in seen and len(seen) < want.get("streams", 0):
            seen.append(key)
            targets.append(v)
    return by_newest(targets)


# --- tags ----------------------------------------------------------------------------------

def tag_for(version: str, upstream: dict) -> str:
    """The upstream tag that the recipe's pattern (or `v` stripping) maps to `version`."""
    core = version.removeprefix(upstream.get("prefix", ""))
    pattern = upstream.get("pattern")
    for tag in (f"v{core}", core, f"release-{core}", f"V{core}"):
        if pattern is None:
            if (tag[1:] if tag[:1] in "vV" and tag[1:2].isdigit() else tag) == core:
                return tag
            continue
        m = re.search(pattern, tag)
        if m and m.group(1) == core:
            return tag
    raise AssertionError(f"no tag maps to {version!r} through pattern {pattern!r}")


def _future(versions: list[str], step: int) -> str:
    """A version newer than all of `versions`, for releases that must not be pinned."""
    prefix, numbers, suffix = _split(newest(versions))
    numbers[-1] += step
    return _join(prefix, numbers, suffix)


# --- one recipe's discovery answer, per type ------------------------------------------------

def repo_id(repo: str) -> int:
    return int(hashlib.sha256(repo.encode()).hexdigest()[:6], 16)


def _release(up: Upstream, repo: str, tag: str, i: int, draft: bool = False,
             prerelease: bool = False) -> dict:
    """GitHub's release object for `tag`: the one tests/catalogue.py wrote for its digests
    when there is one (same assets), else a fresh one."""
    url = f"{GITHUB_API}/repos/{repo}/releases/tags/{quote(tag, safe='')}"
    path = answer_path(up.root, url)
    base = json.loads(path.read_bytes()) if path.is_file() else {"tag_name": tag, "assets": []}
    rid = repo_id(repo) * 1000 + i
    release = {"url": f"{GITHUB_API}/repos/{repo}/releases/{rid}", "id": rid,
               "html_url": f"https://github.com/{repo}/releases/tag/{tag}", "name": tag,
               "target_commitish": "main", "published_at": STAMP.format(month=12 - i % 12, day=1),
               "author": {"login": "release-bot", "id": 1, "type": "Bot"},
               **base, "draft": draft, "prerelease": prerelease}
    if path.is_file():       # the same object under both URLs
        recorded_json(up, url, release)
    return release


def _pages(items: list, size: int) -> list[list]:
    return [items[i:i + size] for i in range(0, len(items), size)] or [[]]


def _github_pages(up: Upstream, repo: str, what: str, items: list, size: int) -> int:
    """`GET /repos/R/<what>?per_page=100` and the pages its Link header leads to."""
    first = f"{GITHUB_API}/repos/{repo}/{what}?per_page=100"
    pages = _pages(items, size)

    def page_url(n: int) -> str:
        return first if n == 1 else f"{GITHUB_API}/repositories/{repo_id(repo)}/{what}?per_page=100&page={n}"
    for n, page in enumerate(pages, 1):
        links = []
        if n < len(pages):
            links += [f'<{page_url(n + 1)}>; rel="next"', f'<{page_url(len(pages))}>; rel="last"']
        if n > 1:
            links += [f'<{page_url(n - 1)}>; rel="prev"', f'<{page_url(1)}>; rel="first"']
        headers = {"Link": ", ".join(links)} if links else {}
        recorded_json(up, page_url(n), page, {**headers, "X-RateLimit-Remaining": "4999"})
    return len(pages)


def github_releases(up: Upstream, upstream: dict, versions: list[str], page_size: int = 100) -> int:
    repo = upstream["repo"]
    draft, pre = _future(versions, 20), _future(versions, 10)
    tags = [(tag_for(draft, upstream), True, False), (tag_for(pre, upstream), False, True)]
    tags += [(tag_for(v, upstream), False, False) for v in by_newest(versions)]
    items = [_release(up, repo, tag, i, d, p) for i, (tag, d, p) in enumerate(tags)]
    return _github_pages(up, repo, "releases", items, page_size)


def github_tags(up: Upstream, upstream: dict, versions: list[str], page_size: int = 100) -> int:
    repo = upstream["repo"]
    names = [tag_for(v, upstream) for v in by_newest(versions)]
    names.insert(1, "not-a-release")          # the pattern must leave this out
    items = [{"name": n, "zipball_url": f"{GITHUB_API}/repos/{repo}/zipball/refs/tags/{n}",
              "tarball_url": f"{GITHUB_API}/repos/{repo}/tarball/refs/tags/{n}",
              "commit": {"sha": hashlib.sha1(n.encode()).hexdigest(),
                         "url": f"{GITHUB_API}/repos/{repo}/commits/{n}"},
              "node_id": f"REF_{i}"} for i, n in enumerate(names)]
    return _github_pages(up, repo, "tags", items, page_size)


def gitlab_tags(up: Upstream, upstream: dict, versions: list[str], page_size: int = 100) -> int:
    first = f"{GITLAB_API}/projects/{quote(upstream['repo'], safe='')}/repository/tags?per_page=100"
    names = [tag_for(v, upstream) for v in by_newest(versions)]
    items = [{"name": n, "message": "", "target": hashlib.sha1(n.encode()).hexdigest(),
              "commit": {"id": hashlib.sha1(n.encode()).hexdigest(), "title": f"Release {n}"},
              "release": None, "protected": False} for n in names]
    pages = _pages(items, page_size) + [[]]    # GitLab announces a next page after the last
    for n, page in enumerate(pages, 1):
        url = first if n == 1 else f"{first}&page={n}"
        recorded_json(up, url, page, {"X-Page": str(n), "X-Next-Page": str(n + 1)
                                      if n < len(pages) else "", "X-Per-Page": str(page_size)})
    return len(pages)


def html_index(up: Upstream, data: dict, name: str, versions: list[str]) -> int:
    upstream = data["upstream"]
    rows = []
    for v in by_newest(versions):
        source = sources_for(data, v, "x86-64")[0]
        filename = render(source["url"], name, data, source, v, "x86-64").rsplit("/", 1)[1]
        m = re.search(upstream["pattern"], filename)
        assert m and upstream.get("prefix", "") + m.group(1) == v, \
            f"{name}: {filename} does not give {v} through {upstream['pattern']!r}"
        rows.append(filename)
        rows.append(filename + ".sha256")
    rows.insert(0, "README.txt")
    title = urlsplit(upstream["url"]).path
    lines = "".join(f'<a href="{f}">{f}</a>{" " * max(1, 50 - len(f))}2025-01-22 17:45  72M\n'
                    for f in rows)
    page = (f"<html>\n<head><title>Index of {title}</title></head>\n<body>\n<h1>Index of {title}"
            f"</h1><hr><pre><a href=\"../\">../</a>\n{lines}</pre><hr></body>\n</html>\n")
    record(up, upstream["url"], page.encode(), {"Content-Type": "text/html"})
    return 1


def hashicorp(up: Upstream, upstream: dict, versions: list[str]) -> int:
    """`/v1/releases/<product>?limit=N`, newest first, then `&after=<timestamp_created of the
    last>` until an empty page."""
    url = upstream["url"]
    product = urlsplit(url).path.rsplit("/", 1)[1]
    limit = int(dict(p.split("=", 1) for p in urlsplit(url).query.split("&"))["limit"])
    entries = [(_future(versions, 10) + "-rc1", True, "oss")]
    for v in by_newest(versions):
        entries += [(v + "+ent", False, "enterprise"), (v, False, "oss")]
    items = []
    for i, (v, pre, licence) in enumerate(entries):
        stamp = STAMP.format(month=12 - (i // 28) % 12, day=28 - i % 28)
        items.append({"builds": [{"arch": a, "os": "linux", "unsupported": False,
                                  "url": f"https://releases.hashicorp.com/{product}/{v}/{product}_{v}_linux_{a}.zip"}
                                 for a in ("amd64", "arm64")],
                      "docker_name_tag": f"hashicorp/{product}:{v}", "is_prerelease": pre,
                      "license_class": licence, "name": product,
                      "status": {"state": "supported", "timestamp_updated": stamp},
                      "timestamp_created": stamp, "timestamp_updated": stamp,
                      "url_license": f"https://github.com/hashicorp/{product}/blob/main/LICENSE",
                      "version": v})
    page_url = url
    pages = _pages(items, limit) + [[]]
    for page in pages:
        recorded_json(up, page_url, page)
        if page:
            page_url = f"{url}&after={page[-1]['timestamp_created']}"
    return len(pages)


def tailscale(up: Upstream, upstream: dict, versions: list[str]) -> int:
    v = newest(versions)
    arches = ("386", "amd64", "arm", "arm64", "geode", "mips", "mipsle", "riscv64")
    recorded_json(up, upstream["url"], {
        "TarballsVersion": v, "Tarballs": {a: f"tailscale_{v}_{a}.tgz" for a in arches},
        "SPKsVersion": v, "SPKs": {}, "Version": v})
    return 1


def kubernetes(up: Upstream, upstream: dict, versions: list[str]) -> int:
    prefix = upstream.get("prefix", "")
    minors: dict[str, list[str]] = {}
    for v in by_newest(versions):
        core = v.removeprefix(prefix)
        minors.setdefault(core.rsplit(".", 1)[0], []).append(core)
    lines = ["# Use \"schedule-builder\" to maintain this file:",
             "# https://github.com/kubernetes/release/tree/master/cmd/schedule-builder", "---",
             "schedules:"]
    for minor, patches in minors.items():
        planned = _future(patches, 1)
        lines += ['- endOfLifeDate: "2027-02-28"', '  maintenanceModeStartDate: "2026-12-28"',
                  "  next:", '    cherryPickDeadline: "2026-03-07"', f"    release: {planned}",
                  '    targetDate: "2026-03-11"', "  previousPatches:"]
        for patch in patches:
            lines += ['  - cherryPickDeadline: "2026-02-07"', f"    release: {patch}",
                      '    targetDate: "2026-02-11"']
        lines += [f'  release: "{minor}"', '  releaseDate: "2025-12-11"']
    lines += ["upcoming_releases:", '- cherryPickDeadline: "2026-03-07"', '  targetDate: "2026-03-11"']
    record(up, upstream.get("url") or SCHEDULE, ("\n".join(lines) + "\n").encode(),
           {"Content-Type": "text/plain; charset=utf-8"})
    return 1


def visible(upstream: dict, versions: list[str]) -> list[str]:
    """What discovery can see of `versions`: Tailscale's JSON names the newest only, the
    Kubernetes schedule the newest patch of each minor."""
    if upstream["type"] == "json-api" and "tailscale" in upstream["url"]:
        return [newest(versions)]
    if upstream["type"] == "kubernetes-schedule":
        prefix = upstream.get("prefix", "")
        best: dict[str, str] = {}
        for v in by_newest(versions):
            best.setdefault(v.removeprefix(prefix).rsplit(".", 1)[0], v)
        return by_newest(best.values())
    return by_newest(versions)


def discovery(up: Upstream, recipes: Path, name: str, versions: list[str],
              page_size: int = 100) -> int:
    """The recorded answer(s) offering `versions` (ours, any order) for recipes/<name>.toml;
    returns how many requests discovery makes for it."""
    data = load_toml(recipes, name)
    upstream = data["upstream"]
    kind = upstream["type"]
    if kind == "github-releases":
        return github_releases(up, upstream, versions, page_size)
    if kind == "github-tags":
        return github_tags(up, upstream, versions, page_size)
    if kind == "gitlab-tags":
        return gitlab_tags(up, upstream, versions, page_size)
    if kind == "html-index":
        return html_index(up, data, name, versions)
    if kind == "kubernetes-schedule":
        return kubernetes(up, upstream, versions)
    if kind == "json-api" and urlsplit(upstream["url"]).hostname == "api.releases.hashicorp.com":
        return hashicorp(up, upstream, versions)
    if kind == "json-api" and urlsplit(upstream["url"]).hostname == "pkgs.tailscale.com":
        return tailscale(up, upstream, versions)
    raise NotImplementedError(f"{name}: no recorded answer for upstream type {kind} at "
                              f"{upstream.get('url')}")


# --- a whole catalogue ----------------------------------------------------------------------

@dataclass(frozen=True)
class Offer:
    name: str
    offered: tuple[str, ...]       # what upstream lists, newest first
    expected: tuple[str, ...]      # what the lock must pin after `doit update`, newest first
    requests: int                  # discovery requests for this recipe


def lock_versions(lock_path: Path) -> dict[str, list[str]]:
    with lock_path.open("rb") as f:
        return {name: list(versions) for name, versions in tomllib.load(f).items()}


def nightly_catalogue(up: Upstream, recipes: Path, lock_path: Path, versions_path: Path,
                      signer: Signer | None, page_size: int = 100) -> dict[str, Offer]:
    """For every recipe versions.toml tracks: upstream offers one stream more than it asks
    for (at least 2), two releases each, a new patch in the newest, and still lists every
    version the lock pins; the downloads of the versions to pin, and the discovery answers."""
    with versions_path.open("rb") as f:
        wanted = tomllib.load(f)
    pinned = lock_versions(lock_path)
    offers = {}
    for name, want in sorted(wanted.items()):
        data = load_toml(recipes, name)
        index = stream_index(data)
        exact = [v for v in want.get("versions", []) if v != "latest"]
        base = newest(pinned.get(name) or exact)
        offered = by_newest(set(around(base, index, max(2, want.get("streams", 1) + 1)))
                            | set(pinned.get(name, [])) | set(exact))
        seen = visible(data["upstream"], offered)
        expected = expected_pins(seen, want, index)
        synthesize(recipes, name, expected, up, signer)
        requests = discovery(up, recipes, name, offered, page_size)
        offers[name] = Offer(name, tuple(seen), tuple(expected), requests)
    return offers


def make_signer(directory: Path) -> Signer:
    """A fresh test signing key in directory/gnupg (stop its agent with
    sysupdate.stop_gpg_agent(signer.gnupghome) when done)."""
    from sysupdate import make_gpg_key
    key = make_gpg_key(directory)
    public = subprocess.run(["gpg", "--batch", "--armor", "--export", key.fingerprint],
                            env={**os.environ, "GNUPGHOME": str(key.gnupghome)},
                            capture_output=True, text=True, check=True).stdout
    return Signer(key.gnupghome, public)


def trust(recipes: Path, signer: Signer) -> None:
    """Make the project's recipes check signatures against the test key that signed the
    synthesized sums (the shipped keys are upstream's)."""
    for toml in recipes.glob("*.toml"):
        for source in load_toml(recipes, toml.stem).get("sources", []):
            if "signature-key" in source:
                (recipes / toml.stem / source["signature-key"]).write_text(signer.armored_public)


def publish_index(dest: Path, lock_path: Path, recipes: Path, leave_out: str | None = None) -> list[str]:
    """An index.json at `dest` listing every image the lock pins (but `leave_out`, an image
    id); returns the ids listed."""
    from sysext_bakery.publish.sysupdate import PublishedImage, index_json
    images, ids = [], []
    for name, versions in lock_versions(lock_path).items():
        for version in versions:
            for arch in load_toml(recipes, name)["arches"]:
                image_id = f"{name}-{version}-{arch}"
                if image_id != leave_out:
                    ids.append(image_id)
                    images.append(PublishedImage(name, version, arch, "0" * 64, 1))
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "index.json").write_text(index_json(images))
    return ids
