"""Discovery's paging through a mirror *directory*: the paging headers recorded beside each
answer (tests/recorded.py's layout), and a full page recorded without them refused."""
from __future__ import annotations

from pathlib import Path

import pytest

import recorded
from sysext_bakery.errors import BakeryError
from sysext_bakery.recipe.load import Upstream
from sysext_bakery.upstream import discover
from sysext_bakery.upstream.net import make_get
from test_upstream import NO_TOKEN, gh
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
