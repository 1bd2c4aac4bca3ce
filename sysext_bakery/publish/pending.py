"""`doit plan`: the images that are pinned but not yet published, as a GitHub Actions matrix
(`{"include": [{"image", "name", "version", "arch"}, ...]}`), so CI builds only what is
missing and never rebuilds a published image.

Where "published" is read: a directory holding index.json (what `doit release` writes), a
URL serving that directory, or the GitHub metadata release's index.json asset; read within
the one bound of a published index (sysupdate.MAX_INDEX) from each."""
from __future__ import annotations

import json
import sys
from collections.abc import Iterable
from pathlib import Path

from sysext_bakery.errors import BakeryError
from sysext_bakery.model.image import Image
from sysext_bakery.publish import sysupdate


def published(location: str, github_repo: str | None, metadata_tag: str, mirror: str | None,
              root: Path) -> set[str]:
    """Image ids published at `location` (a directory or http(s) URL), or, when
    `github_repo` is set, in its metadata release. Nothing published yet (no index.json)
    is an empty set, with a note on stderr."""
    if github_repo:
        url = f"https://github.com/{github_repo}/releases/download/{metadata_tag}/{sysupdate.INDEX}"
        from sysext_bakery.upstream.net import make_get
        get = make_get(mirror, max_bytes=sysupdate.MAX_INDEX)
        reply = get(url, {"Accept": "application/octet-stream"})
        if reply.status == 404:
            return _nothing(url)
        if reply.status != 200:
            raise BakeryError(f"{url}: HTTP {reply.status}",
                              "check the repository, the metadata tag and GITHUB_TOKEN")
        return _ids(sysupdate.parse_index(reply.body, url))
    if location.startswith(("http://", "https://")):
        url = location.rstrip("/") + "/" + sysupdate.INDEX
        body = _read_url(url)
        return _nothing(url) if body is None else _ids(sysupdate.parse_index(body, url))
    path = Path(location)
    path = path if path.is_absolute() else root / path
    index = path / sysupdate.INDEX
    if not index.is_file():
        if path.exists() and not path.is_dir():
            raise BakeryError(f"--from {location}: not a directory",
                              "name the published directory (it holds index.json)")
        return _nothing(str(index))
    body = sysupdate.read_published(index)
    return _ids(sysupdate.parse_index(body, str(index)))


def matrix(images: Iterable[Image], published_ids: set[str]) -> dict:
    include = [{"image": i.id, "name": i.name, "version": i.version, "arch": i.arch}
               for i in sorted(images, key=lambda i: i.id) if i.id not in published_ids]
    return {"include": include}


def render(plan: dict) -> str:
    return json.dumps(plan, separators=(",", ":")) + "\n"


def _ids(images: list[sysupdate.PublishedImage]) -> set[str]:
    return {i.filename.removesuffix(".raw") for i in images}


def _nothing(where: str) -> set[str]:
    print(f"plan: {where} does not exist yet: nothing is published there", file=sys.stderr)
    return set()


def _read_url(url: str) -> bytes | None:
    """The published index over http(s): not an upstream file, so no BAKERY_MIRROR here."""
    from sysext_bakery.http import Http
    with Http(None, upstream=False, hint="check the --from URL") as http:
        reply = http.get(url, max_bytes=sysupdate.MAX_INDEX)
        if reply.status == 404:
            return None
        http.check(reply, url)
        return reply.body
