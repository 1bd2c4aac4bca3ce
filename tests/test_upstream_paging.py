"""Discovery's paging: through a mirror *directory* (the paging headers recorded beside each
answer, tests/recorded.py's layout) and its bound (MAX_PAGES), which it stops at with a
warning naming the URL, never silently."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from pytest_httpserver import HTTPServer

import recorded
from sysext_bakery.errors import BakeryError
from sysext_bakery.model.reply import Reply
from sysext_bakery.recipe.load import Upstream
from sysext_bakery.upstream import discover
from sysext_bakery.upstream.base import MAX_PAGES, json_list, link, pages
from sysext_bakery.upstream.net import make_get
from test_upstream import GH, NO_TOKEN, get, gh  # noqa: F401  (get: the fixture)
from upstream import MirrorServer, Upstream as Tree


def recorded_tree(tmp_path: Path, count: int):
    """GitHub releases and GitLab tags of `count` versions, recorded as tests/recorded.py
    lays out a mirror (100 a page, the paging headers in .headers.json beside each page)."""
    tree = Tree(tmp_path / "mirror")
    versions = [f"1.{i}.0" for i in range(count)]
    recorded.github_releases(tree, {"repo": "example/tool"}, versions)
    recorded.gitlab_tags(tree, {"repo": "group/project"}, versions)
    return tree.root, tuple(sorted(versions, key=lambda v: int(v.split(".")[1]), reverse=True))


def test_a_directory_mirror_pages_by_the_headers_recorded_beside_each_answer(tmp_path: Path) -> None:
    root, versions = recorded_tree(tmp_path, 250)     # 252 releases (a draft, a pre-release)
    assert len(list(root.glob("api.github.com/**/*.headers.json"))) == 3
    get = make_get(str(root))
    assert discover(gh(), get, NO_TOKEN).versions == versions
    gitlab = Upstream(type="gitlab-tags", repo="group/project")
    assert discover(gitlab, get, NO_TOKEN).versions == versions
    # the same tree served over http gives the same answer
    server = MirrorServer(root)
    try:
        assert discover(gh(), make_get(server.url), NO_TOKEN).versions == versions
    finally:
        server.close()


def test_a_full_page_without_its_headers_is_an_error_not_a_silent_first_page(tmp_path: Path) -> None:
    root, versions = recorded_tree(tmp_path, 250)
    for sidecar in root.glob("**/*.headers.json"):
        sidecar.unlink()
    get = make_get(str(root))
    for up, first in ((gh(), "https://api.github.com/repos/example/tool/releases?per_page=100"),
                      (Upstream(type="gitlab-tags", repo="group/project"),
                       "https://gitlab.com/api/v4/projects/group%2Fproject/repository/tags?per_page=100")):
        with pytest.raises(BakeryError) as err:
            discover(up, get, NO_TOKEN)
        assert err.value.message == (f"{first}: a full page of 100 from the mirror directory, "
                                     "without the response headers that say whether another "
                                     "page follows")
        assert ".headers.json" in err.value.hint and "http(s)" in err.value.hint
    # a short page is the last one: no headers needed
    root, versions = recorded_tree(tmp_path / "few", 30)
    for sidecar in root.glob("**/*.headers.json"):
        sidecar.unlink()
    assert discover(gh(), make_get(str(root)), NO_TOKEN).versions == versions


def test_a_full_last_page_with_recorded_empty_headers_is_the_last_page(tmp_path: Path) -> None:
    """`{}` in `<file>.headers.json` is a recording: the answer had no next page. Only a
    file with no headers file at all is refused when full."""
    page = tmp_path / "api.github.com/repos/example/tool/releases?per_page=100"
    page.parent.mkdir(parents=True)
    page.write_text(json.dumps([{"tag_name": f"v1.{99 - i}.0"} for i in range(100)]))
    page.with_name(page.name + ".headers.json").write_text("{}")
    found = discover(gh(), make_get(str(tmp_path)), NO_TOKEN)
    assert found.versions == tuple(f"1.{99 - i}.0" for i in range(100))
    page.with_name(page.name + ".headers.json").unlink()
    with pytest.raises(BakeryError, match="a full page of 100 from the mirror directory"):
        discover(gh(), make_get(str(tmp_path)), NO_TOKEN)


def test_a_network_answer_without_headers_is_not_taken_for_a_mirror_file() -> None:
    """A server's answer without a Link header is the last page, whatever other headers it
    sent (none, here): only a mirror-directory file says nothing about paging."""
    url = "https://api.github.com/repos/example/tool/releases?per_page=100"
    doc = json.dumps([{"tag_name": f"v1.{99 - i}.0"} for i in range(100)]).encode()
    found = discover(gh(), lambda u, _: Reply(200, {}, doc, u), NO_TOKEN)
    assert found.source == url and len(found.versions) == 100 and found.warnings == ()


@pytest.mark.parametrize("sidecar, said", [
    (b'["Link"]', "not a JSON object of header names to strings"),
    (b'{"Link": 1}', "not a JSON object of header names to strings"),
    (b'{"Link": ' * 100 + b"1" + b"}" * 100, "not valid JSON: nested too deeply"),
    (b" " * (65 << 10), "is larger than 65536 bytes"),
])
def test_a_broken_recorded_headers_file_is_named(tmp_path: Path, sidecar: bytes, said: str) -> None:
    root, _ = recorded_tree(tmp_path, 5)
    path = root / "api.github.com/repos/example/tool/releases?per_page=100.headers.json"
    path.write_bytes(sidecar)
    with pytest.raises(BakeryError) as err:
        discover(gh(), make_get(str(root)), NO_TOKEN)
    assert said in err.value.message and ".headers.json" in err.value.message


def serve_github_pages(httpserver: HTTPServer, count: int) -> None:
    """`count` pages of one release each, every page linking the next."""
    for n in range(1, count + 1):
        path = f"{GH}/releases" if n == 1 else "/api.github.com/repositories/4711/releases"
        query = {"per_page": "100", **({"page": str(n)} if n > 1 else {})}
        nxt = f"https://api.github.com/repositories/4711/releases?per_page=100&page={n + 1}"
        httpserver.expect_request(path, query_string=query).respond_with_json(
            [{"tag_name": f"v1.{count - n}.0"}],
            headers={"Link": f'<{nxt}>; rel="next"'} if n < count else {})


def test_discovery_past_max_pages_stops_with_a_warning_naming_the_url(httpserver: HTTPServer,
                                                                       get) -> None:
    first = "https://api.github.com/repos/example/tool/releases?per_page=100"
    serve_github_pages(httpserver, MAX_PAGES + 5)
    found = discover(gh(), get, NO_TOKEN)
    assert len(httpserver.log) == MAX_PAGES                 # bounded
    assert found.versions == tuple(f"1.{MAX_PAGES + 5 - n}.0" for n in range(1, MAX_PAGES + 1))
    assert found.warnings == (
        f"{first}: stopped after {MAX_PAGES} pages with more announced; older releases were "
        "not read (carry an older version you need as an exact version in "
        "release/versions.toml)",)
    # exactly MAX_PAGES pages: all read, nothing to warn about
    httpserver.clear()
    serve_github_pages(httpserver, MAX_PAGES)
    found = discover(gh(), get, NO_TOKEN)
    assert len(found.versions) == MAX_PAGES and found.warnings == ()


def test_the_page_bound_is_a_parameter(httpserver: HTTPServer, get) -> None:
    serve_github_pages(httpserver, 5)
    first = "https://api.github.com/repos/example/tool/releases?per_page=100"
    walk = pages(get, first, lambda _: {}, json_list,
                 lambda r, _: link(r.headers, "next", r.url), max_pages=3)
    assert [len(p) for p in walk.items] == [1, 1, 1] and len(httpserver.log) == 3
    assert walk.warnings[0].startswith(f"{first}: stopped after 3 pages")


def test_gitlab_with_exactly_max_pages_full_pages_gives_no_false_warning(tmp_path: Path) -> None:
    """GitLab announces a next page after the last one (x-next-page, then an empty page):
    at the bound that announcement is checked, so exactly MAX_PAGES full pages are all read
    without a warning, and one tag more still warns."""
    gitlab = Upstream(type="gitlab-tags", repo="group/project")
    root, versions = recorded_tree(tmp_path / "exact", MAX_PAGES * 100)
    found = discover(gitlab, make_get(str(root)), NO_TOKEN)
    assert found.versions == versions and found.warnings == ()
    root, versions = recorded_tree(tmp_path / "more", MAX_PAGES * 100 + 1)
    found = discover(gitlab, make_get(str(root)), NO_TOKEN)
    assert found.versions == versions[:MAX_PAGES * 100]
    assert found.warnings and f"stopped after {MAX_PAGES} pages" in found.warnings[0]


def hashicorp_pages(tmp_path: Path, count: int) -> tuple[Path, tuple[str, ...]]:
    """`count` releases as HashiCorp's API pages them (20 a page, `&after=<timestamp_created
    of the last>` until an empty page), recorded in a mirror directory."""
    tree = Tree(tmp_path / "mirror")
    url = "https://api.releases.hashicorp.com/v1/releases/vault?limit=20"
    items = [{"version": f"1.{count - i}.0", "timestamp_created": f"2025-01-01T00:00:00.{i:06d}Z"}
             for i in range(count)]
    page_url = url
    for n in range(0, count + 1, 20):
        page = items[n:n + 20]
        recorded.recorded_json(tree, page_url, page)
        if page:
            page_url = f"{url}&after={page[-1]['timestamp_created']}"
    return tree.root, tuple(i["version"] for i in items)


def test_json_api_pages_are_small_so_its_bound_is_larger(tmp_path: Path) -> None:
    """HashiCorp's API gives at most 20 releases a page: GitHub's 20-page bound would stop
    vault's discovery at 400 releases and warn on every nightly run. json-api has its own
    bound, still a bounded number of requests, still warned about when reached."""
    from sysext_bakery.upstream import json_api
    up = Upstream(type="json-api", url="https://api.releases.hashicorp.com/v1/releases/vault?limit=20",
                  path="[*].version", next_page=(("after", "timestamp_created"),))
    root, versions = hashicorp_pages(tmp_path / "many", 2000)      # 100 pages
    found = discover(up, make_get(str(root)), NO_TOKEN)
    assert found.versions == versions and found.warnings == ()
    assert json_api.MAX_PAGES * 20 >= 5000 > MAX_PAGES * 20
    root, versions = hashicorp_pages(tmp_path / "more", json_api.MAX_PAGES * 20 + 1)
    asked: list[str] = []
    mirror = make_get(str(root))

    def counted(url, headers):
        asked.append(url)
        return mirror(url, headers)

    found = discover(up, counted, NO_TOKEN)
    assert len(asked) == json_api.MAX_PAGES                              # bounded
    assert found.versions == versions[:json_api.MAX_PAGES * 20]
    assert found.warnings == (f"{up.url}: stopped after {json_api.MAX_PAGES} pages with more "
                              "announced; older releases were not read (carry an older version "
                              "you need as an exact version in release/versions.toml)",)
