"""The URL rules: upstream URLs and the base URL every published transfer file carries."""
from __future__ import annotations

import pytest

from sysext_bakery.errors import BakeryError
from sysext_bakery.model.url import BaseUrl, parse_base_url, url_problem
from sysext_bakery.publish import sysupdate
from sysext_bakery.publish.directory import check_transport


@pytest.mark.parametrize("url", ["https://github.com/a/b/releases/download/v1/x.tgz",
                                 "https://dl.k8s.io/v1.32.2/bin/linux/amd64/kubelet",
                                 "https://h:8443/p%20q"])
def test_good_upstream_urls(url):
    assert url_problem(url) is None


@pytest.mark.parametrize("url, says", [
    ("http://example.com/x", "must start with https://"),
    ("ftp://example.com/x", "must start with https://"),
    ("not a url", "contains ' '"),
    ("https://example.com/x\n", "contains '\\n'"),
    ("https://example.com/\x00", "contains '\\x00'"),
    ("https://exämple.com/", "contains 'ä'"),
    ("https:///path", "has no host"),
    ("https://h:99999999/", "invalid port"),
    ("https://example.com/" + "a" * 3000, "longer than 2048"),
    ("", "must be a URL"),
    (7, "must be a URL"),
])
def test_bad_urls_say_what_is_wrong(url, says):
    assert says in url_problem(url)


def test_base_url_gets_its_slash_and_escapes_specifiers():
    base = parse_base_url("https://example.com/my%20dir", "base_url")
    assert base.url == "https://example.com/my%20dir/"
    assert base.for_unit_file == "https://example.com/my%%20dir/"
    assert not base.insecure and BaseUrl("http://x/").insecure


@pytest.mark.parametrize("url, says", [
    ("https://user:secret@example.com/", "credentials"),
    ("https://example.com/?a=b", "query"),
    ("https://example.com/#top", "fragment"),
    ("ftp://example.com/", "https:// or http://"),
    ("https://example.com/\n[Source]\nPath=https://evil/", "contains '\\n'"),
])
def test_unusable_base_urls_are_refused_naming_the_option(url, says):
    with pytest.raises(BakeryError) as err:
        parse_base_url(url, "--base-url")
    assert err.value.message.startswith("--base-url: ") and says in err.value.message


def test_a_newline_in_release_toml_cannot_inject_a_section():
    text = 'base_url = "https://example.com/\\n[Source]\\nPath=https://evil.example/"'
    with pytest.raises(BakeryError) as err:
        sysupdate.parse_config(text, "release/release.toml")
    assert "release/release.toml: base_url" in str(err.value)


def test_plain_http_needs_a_signature(capsys):
    with pytest.raises(BakeryError, match="plain http and the release is unsigned"):
        check_transport("http://example.com/", signed=False)
    check_transport("http://example.com/", signed=True)
    assert "WARNING" in capsys.readouterr().err
    check_transport("https://example.com/", signed=False)
