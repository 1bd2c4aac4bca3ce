"""Upstream-shaped discovery answers for `doit update` tests, laid out in a BAKERY_MIRROR tree
next to the artifacts: Docker's static index page and the Kubernetes schedule are the recorded
ones of tests/data/upstream/ (edited to add a release), GitHub's release lists carry the
fields the API returns."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from elf import make_elf
from upstream import GO_ARCH, Upstream, docker_tgz, docker_url

DATA = Path(__file__).parent / "data" / "upstream"
DOCKER_INDEX = "https://download.docker.com/linux/static/stable/x86_64/index.html"
SCHEDULE = "https://raw.githubusercontent.com/kubernetes/website/main/data/releases/schedule.yaml"
ARCHES = ("x86-64", "arm64")

KUBERNETES_RECIPE = '''description = "kubectl, the Kubernetes command line (test recipe)"
homepage = "https://kubernetes.io/"
arches = ["x86-64", "arm64"]
streams = "minor"

[upstream]
type = "kubernetes-schedule"
prefix = "v"

[arch-names]
x86-64 = "amd64"
arm64 = "arm64"

[[sources]]
url = "https://dl.k8s.io/release/{version}/bin/linux/{arch}/kubectl"
checksum-url = "{url}.sha256"
install = { "kubectl" = { to = "/usr/bin/kubectl", mode = "0755" } }
'''


def releases_api(repo: str) -> str:
    return f"https://api.github.com/repos/{repo}/releases"


def docker_index(up: Upstream, versions: list[str]) -> None:
    """Docker's recorded index page with its docker-*.tgz lines replaced by `versions`."""
    recorded = (DATA / "docker-static-x86_64.html").read_text().splitlines(keepends=True)
    head = [line for line in recorded if 'href="docker-' not in line and "</pre>" not in line
            and "</body>" not in line and "</html>" not in line]
    rows = [f'<a href="docker-{v}.tgz">docker-{v}.tgz</a>{" " * 30}2025-01-22 17:45  72M\n'
            for v in versions]
    up.add(DOCKER_INDEX, "".join(head + rows + ["</pre><hr></body>\n", "</html>\n"]).encode())


def docker_release(up: Upstream, version: str) -> None:
    for arch in ARCHES:
        up.add(docker_url(arch, version), docker_tgz(arch, version))


def github_releases(up: Upstream, repo: str, tags: list[str]) -> None:
    """One page of GET /repos/{repo}/releases, newest first, as GitHub shapes it."""
    items = [{"id": 1000 + i, "tag_name": tag, "name": tag, "draft": False, "prerelease": False,
              "html_url": f"https://github.com/{repo}/releases/tag/{tag}",
              "published_at": "2025-03-01T12:00:00Z", "assets": []}
             for i, tag in enumerate(tags)]
    up.add(releases_api(repo), json.dumps(items, indent=1).encode())


def kubectl_url(version: str, arch: str) -> str:
    return f"https://dl.k8s.io/release/{version}/bin/linux/{GO_ARCH[arch]}/kubectl"


def kubernetes(up: Upstream, versions: list[str], new_minor: str | None = None) -> None:
    """The recorded schedule (1.32.2, 1.31.6, 1.30.10 the newest patches), optionally with a
    newer minor `new_minor` (e.g. "1.33.0") in front, and kubectl + its .sha256 per arch."""
    text = (DATA / "kubernetes-schedule.yaml").read_text()
    if new_minor:
        minor = new_minor.rsplit(".", 1)[0]
        entry = (f'- endOfLifeDate: "2026-06-28"\n  previousPatches:\n  - release: {new_minor}\n'
                 f'    targetDate: "2025-04-23"\n  release: "{minor}"\n  releaseDate: "2025-04-23"\n')
        text = text.replace("schedules:\n", "schedules:\n" + entry, 1)
    up.add(SCHEDULE, text.encode())
    for version in versions:
        for arch in ARCHES:
            url = kubectl_url(version, arch)
            data = make_elf(arch, f"kubectl {version}\n".encode() * 40)
            up.add(url, data)
            up.add(url + ".sha256", hashlib.sha256(data).hexdigest().encode())


def pinned_sources(up: Upstream, *urls: str) -> dict:
    return {"sources": [{"url": u, "sha256": up.sha256[u]} for u in urls]}
