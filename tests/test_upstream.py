"""Upstream discovery against recorded upstream-shaped answers (tests/data/upstream/), served
on loopback through BAKERY_MIRROR exactly as the real hosts would be mirrored."""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from pytest_httpserver import HTTPServer

from sysext_bakery import upstream
from sysext_bakery.errors import BakeryError
from sysext_bakery.recipe.load import Upstream, parse_recipe
from sysext_bakery.recipe.schema import UPSTREAM_TYPES
from sysext_bakery.upstream import Reply, Skipped, discover, tag_version
from sysext_bakery.upstream.json_api import parse_path
from sysext_bakery.upstream.net import make_get

DATA = Path(__file__).parent / "data" / "upstream"
TOKEN = "ghp_discovery_secret_0123456789"
GH = "/api.github.com/repos/example/tool"
JSON = "application/json; charset=utf-8"
NO_TOKEN: dict[str, str] = {}


def body(name: str) -> bytes:
    return (DATA / name).read_bytes()


@pytest.fixture
def get(httpserver: HTTPServer, monkeypatch: pytest.MonkeyPatch):
    """The network edge as `doit update` will build it: from BAKERY_MIRROR."""
    monkeypatch.setenv("BAKERY_MIRROR", httpserver.url_for("/"))
    return make_get(os.environ["BAKERY_MIRROR"])


def serve_releases(httpserver: HTTPServer) -> None:
    def page(n: int) -> str:
        return f"https://api.github.com/repositories/4711/releases?per_page=100&page={n}"
    links = {1: f'<{page(2)}>; rel="next", <{page(3)}>; rel="last"',
             2: f'<{page(1)}>; rel="prev", <{page(3)}>; rel="next", <{page(3)}>; rel="last", '
                f'<{page(1)}>; rel="first"',
             3: f'<{page(2)}>; rel="prev", <{page(1)}>; rel="first"'}
    httpserver.expect_request(f"{GH}/releases", query_string="per_page=100").respond_with_data(
        body("github-releases-1.json"), content_type=JSON, headers={"Link": links[1]})
    for n in (2, 3):
        httpserver.expect_request("/api.github.com/repositories/4711/releases",
                                  query_string={"per_page": "100", "page": str(n)}).respond_with_data(
            body(f"github-releases-{n}.json"), content_type=JSON, headers={"Link": links[n]})


def gh(kind: str = "github-releases", **kw) -> Upstream:
    return Upstream(type=kind, repo="example/tool", **kw)


def test_github_releases_over_three_pages(httpserver: HTTPServer, get) -> None:
    serve_releases(httpserver)
    found = discover(gh(), get, {"GITHUB_TOKEN": TOKEN})
    # v2.2.0 is a draft, v2.1.0rc1 and v2.1.0-beta.1 are pre-releases: none of them counts
    assert found.versions == ("2.0.1", "2.0.0", "1.10.0", "1.9.3", "1.9.2", "1.2.0")
    assert found.skipped == ()
    assert found.source == "https://api.github.com/repos/example/tool/releases?per_page=100"
    asked = [(r.path, r.query_string.decode()) for r, _ in httpserver.log]
    assert asked == [(f"{GH}/releases", "per_page=100"),
                     ("/api.github.com/repositories/4711/releases", "per_page=100&page=2"),
                     ("/api.github.com/repositories/4711/releases", "per_page=100&page=3")]
    for request, _ in httpserver.log:
        assert request.headers["Authorization"] == f"Bearer {TOKEN}"
        assert request.headers["Accept"] == "application/vnd.github+json"


def test_github_releases_with_prereleases_and_a_pattern(httpserver: HTTPServer, get) -> None:
    serve_releases(httpserver)
    found = discover(gh(prereleases=True), get, NO_TOKEN)
    assert found.versions[:2] == ("2.1.0rc1", "2.0.1")
    assert "2.2.0" not in found.versions                       # drafts never count
    assert found.skipped == (Skipped("v2.1.0-beta.1", found.skipped[0].reason),)
    assert "'-'" in found.skipped[0].reason
    assert all("Authorization" not in r.headers for r, _ in httpserver.log)

    httpserver.clear_log()
    found = discover(gh(prereleases=True, pattern=r"^v(\d+\.\d+\.\d+)$", prefix="v"), get, NO_TOKEN)
    assert found.versions == ("v2.0.1", "v2.0.0", "v1.10.0", "v1.9.3", "v1.9.2", "v1.2.0")
    assert found.skipped == ()


def test_github_tags_names_the_tags_it_refuses(httpserver: HTTPServer, get) -> None:
    nxt = "https://api.github.com/repositories/4711/tags?per_page=100&page=2"
    httpserver.expect_request(f"{GH}/tags", query_string="per_page=100").respond_with_data(
        body("github-tags-1.json"), content_type=JSON, headers={"Link": f'<{nxt}>; rel="next"'})
    httpserver.expect_request("/api.github.com/repositories/4711/tags",
                              query_string="per_page=100&page=2").respond_with_data(
        body("github-tags-2.json"), content_type=JSON)
    found = discover(gh("github-tags"), get, NO_TOKEN)
    assert found.versions == ("1.10.0", "1.9.0", "1.0.0")
    reasons = {s.tag: s.reason for s in found.skipped}
    assert set(reasons) == {"v1.0/evil", "api/v1.8.0", "v1.0 rc", "..", "v0.9.0\x1b[31m"}
    assert "'/'" in reasons["v1.0/evil"] and "'/'" in reasons["api/v1.8.0"]
    assert reasons["v1.0 rc"] == "contains whitespace"
    assert reasons[".."] == "contains '..'"
    assert reasons["v0.9.0\x1b[31m"] == "contains a control character"
    assert "'v0.9.0\\x1b[31m'" in [str(s).split(":")[0] for s in found.skipped]   # printable

    # a pattern picks the releases; unsafe tags are refused even when it would not match them
    found = discover(gh("github-tags", pattern=r"^v(\d+\.\d+\.\d+)$"), get, NO_TOKEN)
    assert found.versions == ("1.10.0", "1.9.0", "1.0.0")
    assert {s.tag for s in found.skipped} == {"v1.0 rc", "..", "v0.9.0\x1b[31m"}


def test_rate_limit_is_a_clear_error(httpserver: HTTPServer, get) -> None:
    reset = int(time.time()) + 1800
    httpserver.expect_request(f"{GH}/releases").respond_with_json(
        {"message": "API rate limit exceeded for 192.0.2.1. (But here's the good news: "
                    "Authenticated requests get a higher rate limit.)",
         "documentation_url": "https://docs.github.com/rest/overview/resources-in-the-rest-api#rate-limiting"},
        status=403, headers={"x-ratelimit-limit": "60", "x-ratelimit-remaining": "0",
                             "x-ratelimit-reset": str(reset), "x-ratelimit-resource": "core"})
    with pytest.raises(BakeryError) as e:
        discover(gh(), get, NO_TOKEN)
    when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(reset))
    assert e.value.message == ("https://api.github.com/repos/example/tool/releases?per_page=100: "
                               f"rate limit exceeded (HTTP 403); it resets at {when}")
    assert "GITHUB_TOKEN" in e.value.hint

    with pytest.raises(BakeryError) as e:
        discover(gh(), get, {"GITHUB_TOKEN": TOKEN})
    assert "this GITHUB_TOKEN's quota is used up" in e.value.hint
    assert TOKEN not in str(e.value)


def test_secondary_rate_limit_with_retry_after(httpserver: HTTPServer, get) -> None:
    httpserver.expect_request(f"{GH}/tags").respond_with_json(
        {"message": "You have exceeded a secondary rate limit."}, status=429,
        headers={"Retry-After": "60"})
    with pytest.raises(BakeryError) as e:
        discover(gh("github-tags"), get, NO_TOKEN)
    assert "rate limit exceeded (HTTP 429); it resets at" in e.value.message
    assert e.value.message.endswith("(in 60 s)")


def test_html_where_json_was_expected(httpserver: HTTPServer, get) -> None:
    httpserver.expect_request(f"{GH}/releases").respond_with_data(
        "<!DOCTYPE html><html><head><title>Sign in</title></head><body>Portal</body></html>",
        content_type="text/html; charset=utf-8")
    with pytest.raises(BakeryError) as e:
        discover(gh(), get, {"GITHUB_TOKEN": TOKEN})
    assert e.value.message == ("https://api.github.com/repos/example/tool/releases?per_page=100: "
                               "expected JSON, got an HTML page (text/html; charset=utf-8)")
    assert TOKEN not in str(e.value)


def test_token_never_reaches_messages_or_other_hosts(httpserver: HTTPServer, get) -> None:
    httpserver.expect_request(f"{GH}/tags").respond_with_json(
        {"message": "Not Found", "documentation_url": "https://docs.github.com/rest"}, status=404)
    with pytest.raises(BakeryError) as e:
        discover(gh("github-tags"), get, {"GITHUB_TOKEN": TOKEN})
    assert e.value.message == ("https://api.github.com/repos/example/tool/tags?per_page=100: "
                               "HTTP 404 Not Found: Not Found")
    assert TOKEN not in str(e.value)
    assert httpserver.log[0][0].headers["Authorization"] == f"Bearer {TOKEN}"

    # a Link to another host is refused before anything (or any token) is sent there
    httpserver.clear()
    httpserver.expect_request(f"{GH}/releases").respond_with_data(
        body("github-releases-1.json"), content_type=JSON,
        headers={"Link": '<https://collector.example.net/steal?page=2>; rel="next"'})
    with pytest.raises(BakeryError) as e:
        discover(gh(), get, {"GITHUB_TOKEN": TOKEN})
    assert "the next page is on another host (collector.example.net)" in e.value.message
    assert TOKEN not in str(e.value)
    assert len(httpserver.log) == 1


def test_a_redirect_does_not_carry_the_token(httpserver: HTTPServer, get) -> None:
    # A Location on another host (localhost <-> 127.0.0.1 here) never gets the token;
    # the answer still arrives
    moved = httpserver.url_for("/moved/tags")
    host = urlsplit(moved).hostname
    moved = moved.replace(f"//{host}:", "//127.0.0.1:" if host == "localhost" else "//localhost:")
    httpserver.expect_request(f"{GH}/tags").respond_with_data(
        "", status=301, headers={"Location": moved})
    httpserver.expect_request("/moved/tags").respond_with_data(body("github-tags-1.json"),
                                                               content_type=JSON)
    found = discover(gh("github-tags", pattern=r"^v(\d+\.\d+\.\d+)$"), get, {"GITHUB_TOKEN": TOKEN})
    assert found.versions == ("1.10.0", "1.9.0")
    first, second = (r for r, _ in httpserver.log)
    assert first.headers["Authorization"] == f"Bearer {TOKEN}"
    assert "Authorization" not in second.headers


def test_gitlab_tags_pages_by_x_next_page(httpserver: HTTPServer, get) -> None:
    path = "/gitlab.com/api/v4/projects/group/project/repository/tags"   # as werkzeug decodes it
    # GitLab announces a next page even after the last one; the empty page ends the walk
    for page, data, nxt in ((None, body("gitlab-tags-1.json"), "2"),
                            ("2", body("gitlab-tags-2.json"), "3"), ("3", b"[]", "")):
        query = {"per_page": "100", **({"page": page} if page else {})}
        httpserver.expect_request(path, query_string=query).respond_with_data(
            data, content_type=JSON,
            headers={"x-next-page": nxt, "x-page": page or "1", "x-per-page": "100"})
    found = discover(Upstream(type="gitlab-tags", repo="group/project"), get, NO_TOKEN)
    assert found.versions == ("17.2.0", "17.1.3", "17.1.2", "16.11.10")
    assert found.source == "https://gitlab.com/api/v4/projects/group%2Fproject/repository/tags?per_page=100"
    assert len(httpserver.log) == 3
    raw = httpserver.log[0][0].environ
    assert "/projects/group%2Fproject/" in raw.get("REQUEST_URI", raw.get("RAW_URI", ""))


def test_html_index_like_dockers(httpserver: HTTPServer, get) -> None:
    httpserver.expect_request("/download.docker.com/linux/static/stable/x86_64/").respond_with_data(
        body("docker-static-x86_64.html"), content_type="text/html")
    up = Upstream(type="html-index", url="https://download.docker.com/linux/static/stable/x86_64/",
                  pattern=r"docker-(\d+\.\d+\.\d+)\.tgz")
    found = discover(up, get, NO_TOKEN)
    # 17.03.x-ce does not match the pattern; rootless-extras is another file; links repeat
    assert found.versions == ("27.5.1", "27.5.0", "25.0.0", "24.0.9", "18.09.0")
    assert found.skipped == ()


HASHICORP = Upstream(type="json-api", url="https://api.releases.hashicorp.com/v1/releases/vault?limit=20",
                     path="[*].version",
                     filter=(("is_prerelease", False), ("license_class", "oss")),
                     next_page=(("after", "timestamp_created"),))


def serve_hashicorp(httpserver: HTTPServer) -> None:
    for after, n in ((None, 1), ("2025-01-29T16:30:21.000Z", 2), ("2024-12-09T12:00:00.000Z", 3)):
        query = {"limit": "20", **({"after": after} if after else {})}
        httpserver.expect_request("/api.releases.hashicorp.com/v1/releases/vault",
                                  query_string=query).respond_with_data(
            body(f"hashicorp-vault-{n}.json"), content_type="application/json")


def test_json_api_hashicorp_with_filters_and_after_paging(httpserver: HTTPServer, get) -> None:
    serve_hashicorp(httpserver)
    found = discover(HASHICORP, get, NO_TOKEN)
    assert found.versions == ("1.18.4", "1.18.3", "1.17.9")
    assert len(httpserver.log) == 3

    httpserver.clear_log()
    found = discover(dataclasses.replace(HASHICORP, filter=()), get, NO_TOKEN)
    assert found.versions[:2] == ("1.18.4+ent", "1.18.4")
    assert [s.tag for s in found.skipped] == ["1.19.0-rc1"]

    # a nested field in the filter; a path that misses the field is an error naming both
    found = discover(dataclasses.replace(HASHICORP, filter=(("status.state", "supported"),
                                                            ("license_class", "enterprise"))),
                     get, NO_TOKEN)
    assert found.versions == ("1.18.4+ent", "1.17.9+ent.hsm.fips1402")
    with pytest.raises(BakeryError) as e:
        discover(dataclasses.replace(HASHICORP, path="[*].verison"), get, NO_TOKEN)
    assert e.value.message == ("https://api.releases.hashicorp.com/v1/releases/vault?limit=20: "
                               "upstream.path '[*].verison': no field 'verison' in an object")


def test_kubernetes_schedule(httpserver: HTTPServer, get) -> None:
    httpserver.expect_request("/raw.githubusercontent.com/kubernetes/website/main/data/releases/"
                              "schedule.yaml").respond_with_data(body("kubernetes-schedule.yaml"),
                                                                 content_type="text/plain")
    found = discover(Upstream(type="kubernetes-schedule", prefix="v"), get, NO_TOKEN)
    # one per supported minor, its newest shipped patch (`next` is only planned); the
    # unquoted `release: 1.30` must not turn into 1.3
    assert found.versions == ("v1.32.2", "v1.31.6", "v1.30.10")
    assert found.skipped == ()


def test_directory_mirror_serves_recorded_answers(tmp_path: Path) -> None:
    root = tmp_path / "mirror"
    api = root / "api.releases.hashicorp.com" / "v1" / "releases"
    api.mkdir(parents=True)
    # the query belongs to the file name, unquoted, as model.url.mirror_url maps it
    shutil.copy(DATA / "hashicorp-vault-1.json", api / "vault?limit=20")
    shutil.copy(DATA / "hashicorp-vault-2.json", api / "vault?limit=20&after=2025-01-29T16:30:21.000Z")
    shutil.copy(DATA / "hashicorp-vault-3.json", api / "vault?limit=20&after=2024-12-09T12:00:00.000Z")
    k8s = root / "raw.githubusercontent.com/kubernetes/website/main/data/releases"
    k8s.mkdir(parents=True)
    shutil.copy(DATA / "kubernetes-schedule.yaml", k8s / "schedule.yaml")
    get = make_get(str(root))
    assert discover(HASHICORP, get, NO_TOKEN).versions == ("1.18.4", "1.18.3", "1.17.9")
    assert discover(Upstream(type="kubernetes-schedule"), get, NO_TOKEN).versions == \
        ("1.32.2", "1.31.6", "1.30.10")
    with pytest.raises(BakeryError) as e:
        discover(gh(), get, NO_TOKEN)
    assert e.value.message.startswith("https://api.github.com/repos/example/tool/releases?per_page=100: "
                                      "not found in the mirror directory")


def test_directory_mirror_answers_a_directory_url_with_its_index_page(tmp_path: Path) -> None:
    # docker's html-index is a directory URL; a recorded tree holds the page as index.html
    page = tmp_path / "download.docker.com/linux/static/stable/x86_64/index.html"
    page.parent.mkdir(parents=True)
    shutil.copy(DATA / "docker-static-x86_64.html", page)
    docker = Upstream(type="html-index", url="https://download.docker.com/linux/static/stable/x86_64/",
                      pattern=r"docker-(\d+\.\d+\.\d+)\.tgz")
    found = discover(docker, make_get(str(tmp_path)), NO_TOKEN)
    assert "24.0.9" in found.versions and found.source == docker.url
    page.unlink()
    with pytest.raises(BakeryError, match="x86_64/: not found in the mirror directory"):
        discover(docker, make_get(str(tmp_path)), NO_TOKEN)


def test_without_a_mirror_only_https_is_asked() -> None:
    with pytest.raises(BakeryError, match="only https:// upstream URLs"):
        make_get(None)("http://example.org/index.html", {})


# --- the pure parts -------------------------------------------------------------------------

def fake_get(pages: dict[str, tuple[bytes, dict[str, str]]]):
    def get(url: str, headers) -> Reply:
        data, h = pages[url]
        return Reply(200, h, data, url)
    return get


def test_tag_mapping() -> None:
    assert tag_version("v1.2.3", None) == "1.2.3"
    assert tag_version("version-1", None) == Skipped("version-1", tag_version("version-1", None).reason)
    assert tag_version("v1.32.2", None, "v") == "v1.32.2"
    assert tag_version("release-2.0", r"^release-(\d+\.\d+)$") == "2.0"
    assert tag_version("nightly", r"^v(\d+)$") is None
    assert isinstance(tag_version("v1\n", r"^v(\d+)"), Skipped)


def test_headers_fold_and_ignore_case() -> None:
    reply = Reply(200, [("Link", "<a>; rel=\"next\""), ("link", "<b>; rel=\"last\"")], b"", "https://x/")
    assert reply.headers["LINK"] == '<a>; rel="next", <b>; rel="last"'
    assert "lInK" in reply.headers and Reply(200, {"ETag": "x"}, b"", "u").headers["etag"] == "x"


def test_discovery_answers_with_the_http_clients_reply(httpserver) -> None:
    """One reply type and one headers type: the edge hands discovery http's own Reply, with
    the URL that was asked for."""
    from sysext_bakery import http
    httpserver.expect_request("/example.org/x").respond_with_data("hi", headers={"Link": "<y>; rel=next"})
    reply = make_get(httpserver.url_for("/"))("https://example.org/x", {})
    assert Reply is http.Reply and type(reply) is Reply
    assert (reply.status, reply.body, reply.url) == (200, b"hi", "https://example.org/x")
    assert reply.headers["link"] == "<y>; rel=next"


def test_json_path_syntax() -> None:
    assert parse_path("[*].version") == ["*", "version"]
    assert parse_path("data[*].attributes.version") == ["data", "*", "attributes", "version"]
    assert parse_path("releases[0].tag") == ["releases", 0, "tag"]
    for bad in ("", ".version", "[*]version", "a..b", "a.[*]", "a[?(@.x)]", "a b"):
        with pytest.raises(ValueError):
            parse_path(bad)


def test_json_api_list_of_strings_and_non_strings() -> None:
    doc = json.dumps({"versions": ["1.0.0", 2, "v1.1.0"]}).encode()
    get = fake_get({"https://x.example/v": (doc, {"Content-Type": "application/json"})})
    found = discover(Upstream(type="json-api", url="https://x.example/v", path="versions[*]"),
                     get, NO_TOKEN)
    assert found.versions == ("1.1.0", "1.0.0")
    assert found.skipped == (Skipped("2", "selected by 'versions[*]' but 2 where a string was expected"),)


def test_types_match_the_recipe_schema() -> None:
    assert tuple(upstream.TYPES) == UPSTREAM_TYPES


GOOD = {"description": "d", "homepage": "https://example.org/", "arches": ["x86-64"],
        "sources": [{"url": "https://example.org/{version}.tar.gz", "install": {"x": "/usr/bin/"}}]}


def recipe_error(up: dict) -> str:
    with pytest.raises(BakeryError) as e:
        parse_recipe("tool", Path("tool.toml"), {**GOOD, "upstream": up}, None)
    return e.value.message


def test_recipe_upstream_keys() -> None:
    r = parse_recipe("tool", Path("tool.toml"), {**GOOD, "upstream": {
        "type": "json-api", "url": "https://api.releases.hashicorp.com/v1/releases/vault?limit=20",
        "path": "[*].version", "filter": {"license_class": "oss", "is_prerelease": False},
        "next-page": {"after": "timestamp_created"}}}, None)
    assert r.upstream.filter == (("is_prerelease", False), ("license_class", "oss"))
    assert r.upstream.next_page == (("after", "timestamp_created"),)
    hash(r.upstream)
    k8s = parse_recipe("tool", Path("tool.toml"),
                       {**GOOD, "upstream": {"type": "kubernetes-schedule", "prefix": "v"}}, None)
    assert k8s.upstream.prefix == "v" and k8s.upstream.url is None

    assert recipe_error({"type": "json-api", "url": "https://x.example/"}) == \
        "tool.toml: upstream.path: required for type 'json-api'"
    assert "upstream.path: path '[?x]'" in recipe_error(
        {"type": "json-api", "url": "https://x.example/", "path": "[?x]"})
    assert recipe_error({"type": "github-tags", "repo": "a/b", "filter": {"a": "b"}}) == \
        "tool.toml: upstream.filter: only for type 'json-api'"
    assert recipe_error({"type": "html-index", "url": "https://x.example/"}) == \
        "tool.toml: upstream.pattern: required for type 'html-index'"
    assert "expected a string, boolean or integer" in recipe_error(
        {"type": "json-api", "url": "https://x.example/", "path": "a", "filter": {"a": [1]}})


@pytest.mark.parametrize("target, said", [
    ("https://api.github.com/repos/example/tool/releases?page=2\x1b[2J", "contains '\\x1b'"),
    ("https://api.github.com/" + "x" * 3000, "longer than 2048"),
    ("https://bot:hunter2@api.github.com/repos/example/tool/releases?page=2",
     "the next page is on another host (***@api.github.com)"),
])
def test_a_hostile_next_page_link_is_refused_by_name(target: str, said: str) -> None:
    """The Link header is upstream's text: a control character (terminal escapes), a huge
    URL or credentials never reach a message or a request."""
    from sysext_bakery.upstream.base import json_list, link, pages
    first = "https://api.github.com/repos/example/tool/releases?per_page=100"
    asked = []

    def get(url, headers):
        asked.append(url)
        return Reply(200, upstream.base.Headers({"Link": f'<{target}>; rel="next"'}), b"[{}]", url)
    with pytest.raises(BakeryError) as err:
        pages(get, first, lambda _: {}, json_list, lambda r, _: link(r.headers, "next", r.url))
    assert asked == [first]
    text = err.value.message
    assert said in text and text.startswith(f"{first}: the next page ")
    assert "\x1b" not in text and "\n" not in text and "hunter2" not in text and len(text) < 400


def test_an_answer_nested_past_the_recursion_limit_is_a_clear_error() -> None:
    from sysext_bakery.upstream.base import check_status, json_of
    url = "https://api.github.com/repos/example/tool/releases?per_page=100"
    deep = b"[" * 100_000 + b"]" * 100_000
    with pytest.raises(BakeryError) as err:
        json_of(Reply(200, upstream.base.Headers({"Content-Type": JSON}), deep, url))
    assert err.value.message == f"{url}: not valid JSON: nested too deeply (more than 64 levels)"
    # within Python's recursion limit, but past the bound every JSON answer shares
    with pytest.raises(BakeryError, match="nested too deeply"):
        json_of(Reply(200, upstream.base.Headers({}), b"[" * 65 + b"]" * 65, url))
    assert json_of(Reply(200, upstream.base.Headers({}), b"[" * 64 + b"]" * 64, url))
    # a rate-limit answer whose explanation nests that deep still names the status
    with pytest.raises(BakeryError) as err:
        check_status(Reply(403, upstream.base.Headers({}), b'{"message": ' + deep + b"}", url))
    assert err.value.message.startswith(f"{url}: HTTP 403")


@pytest.mark.parametrize("kind, repo, path, entry, said", [
    ("github-releases", "example/tool", f"{GH}/releases", {"name": "v1.2.3"},
     "an entry of the list has no 'tag_name' field"),
    ("github-releases", "example/tool", f"{GH}/releases", {"tag_name": 123},
     "an entry of the list: 'tag_name' is a JSON integer, expected a string"),
    ("github-tags", "example/tool", f"{GH}/tags", {"tag_name": "v1.2.3"},
     "an entry of the list has no 'name' field"),
    ("github-tags", "example/tool", f"{GH}/tags", "v1.2.3",
     "an entry of the list is a JSON string, not an object"),
    ("gitlab-tags", "group/project", "/gitlab.com/api/v4/projects/group/project/repository/tags",
     {"name": None}, "an entry of the list: 'name' is a JSON null, expected a string"),
])
def test_an_entry_without_its_documented_field_is_a_clear_error(
        httpserver: HTTPServer, get, kind: str, repo: str, path: str, entry, said: str) -> None:
    httpserver.expect_request(path).respond_with_json([{"name": "v1.0.0", "tag_name": "v1.0.0"},
                                                       entry])
    with pytest.raises(BakeryError) as err:
        discover(Upstream(type=kind, repo=repo), get, NO_TOKEN)
    assert err.value.message.endswith(f"?per_page=100: {said}"), err.value.message
    assert "API answer?" in err.value.hint and "[upstream]" in err.value.hint


def test_discovery_reads_an_answer_within_the_one_answer_limit(tmp_path: Path) -> None:
    """One bound for an answer read whole (http.MAX_BODY), discovery's included."""
    from sysext_bakery import http
    page = tmp_path / "example.org/big.json"
    page.parent.mkdir(parents=True)
    with page.open("wb") as f:
        f.truncate(20 << 20)                       # sparse; past the old 16 MiB of discovery
    assert len(make_get(str(tmp_path))("https://example.org/big.json", {}).body) == 20 << 20
    with page.open("r+b") as f:
        f.truncate(http.MAX_BODY + 1)
    with pytest.raises(BakeryError) as err:
        make_get(str(tmp_path))("https://example.org/big.json", {})
    assert f"larger than {http.MAX_BODY} bytes" in err.value.message
