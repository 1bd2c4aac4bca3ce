"""Upstream checksums of every shape, GitHub asset digests and gpg-signed sums files, served
from loopback through the mirror mapping (BAKERY_MIRROR), with real gpg keys; and the
per-source recipe keys that pick and name sources (since/until, arch-names, companions)."""
from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import tarfile
import textwrap
import tomllib
import zipfile
from pathlib import Path

import pytest

from sysext_bakery.build import actions
from sysext_bakery.build.checksums import parse_checksum
from sysext_bakery.build.fetch import Fetched, fetch
from sysext_bakery.errors import BakeryError
from sysext_bakery.gpg import verify_detached
from sysext_bakery.recipe.load import load_recipe, resolve_image
from sysext_bakery.settings import ImagePaths, Settings
from sysupdate import GpgKey, gpg_key, new_gpg_key  # noqa: F401  (fixtures)

BODY = os.urandom(200_000)
SHA256 = hashlib.sha256(BODY).hexdigest()
SHA512 = hashlib.sha512(BODY).hexdigest()
URL = "https://releases.example.org/tool/1.2.3/tool_1.2.3_linux_amd64.zip"
PATH = "/releases.example.org/tool/1.2.3/tool_1.2.3_linux_amd64.zip"
SUMS_URL = "https://releases.example.org/tool/1.2.3/tool_1.2.3_SHA256SUMS"
SUMS_PATH = "/releases.example.org/tool/1.2.3/tool_1.2.3_SHA256SUMS"
NAME = "tool_1.2.3_linux_amd64.zip"


@pytest.fixture(autouse=True)
def fast_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BAKERY_FETCH_BACKOFF", "0.01")
    monkeypatch.delenv("GITHUB_TOKEN", raising=False)


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    return tmp_path / "cache"


def cached(cache: Path) -> list[str]:
    return sorted(str(p.relative_to(cache)) for p in cache.rglob("*") if p.is_file())


def paths_asked(httpserver) -> list[str]:
    return [r.path for r, _ in httpserver.log]


# --- checksum file formats ----------------------------------------------------------------

@pytest.mark.parametrize("text", [
    f"{SHA256}\n",                                        # bare
    f"{SHA256}  {NAME}\n",                                # sha256sum text mode
    f"{SHA256} *{NAME}\n",                                # sha256sum binary mode
    f"SHA256 ({NAME}) = {SHA256}\n",                      # BSD / sha256sum --tag
    f"SHA256 (dist/{NAME})= {SHA256.upper()}\n",          # BSD, path, upper case
    f"{'1' * 64}  tool_1.2.3_linux_arm64.zip\n{SHA256}  {NAME}\n{'2' * 64}  tool_1.2.3_darwin_amd64.zip\n",
    f"# k3s style\n{'3' * 64}  k3s-arm64\n\n{SHA256}  ./{NAME}\n",
])
def test_each_sha256_format_is_accepted(text: str) -> None:
    assert parse_checksum(text, URL, SUMS_URL) == SHA256


def test_multi_file_sums_without_the_file_is_a_clear_error() -> None:
    text = f"{'1' * 64}  tool_1.2.3_linux_arm64.zip\n{'2' * 64}  tool_1.2.3_darwin_amd64.zip\n"
    with pytest.raises(BakeryError) as err:
        parse_checksum(text, URL, SUMS_URL)
    assert err.value.message == (
        f"{SUMS_URL}: no sha256 entry for {NAME} (the file lists tool_1.2.3_darwin_amd64.zip, "
        f"tool_1.2.3_linux_arm64.zip); checksum file of {URL}")
    assert "checksum-url" in err.value.hint


def test_sha512_formats_and_no_mixing() -> None:
    assert parse_checksum(f"{SHA512}  {NAME}\n", URL, "c", "sha512") == SHA512
    assert parse_checksum(f"SHA512 ({NAME}) = {SHA512}\n", URL, "c", "sha512") == SHA512
    assert parse_checksum(f"{SHA512}\n", URL, "c", "sha512") == SHA512
    # a sha256 line is no sha512 line, and the other way round
    with pytest.raises(BakeryError, match=f"c: no sha512 entry for {NAME} \\(not one sha512 line"):
        parse_checksum(f"{SHA256}  {NAME}\nSHA256 ({NAME}) = {SHA256}\n", URL, "c", "sha512")
    with pytest.raises(BakeryError, match=f"c: no sha256 entry for {NAME}"):
        parse_checksum(f"{SHA512}  {NAME}\n", URL, "c")


def test_bsd_checksum_file_through_the_mirror(httpserver, cache: Path) -> None:
    httpserver.expect_request(PATH).respond_with_data(BODY)
    httpserver.expect_request(SUMS_PATH).respond_with_data(
        f"SHA256 (tool_1.2.3_linux_arm64.zip) = {'1' * 64}\nSHA256 ({NAME}) = {SHA256}\n")
    got = fetch(URL, None, cache, checksum_url=SUMS_URL, mirror=httpserver.url_for("/"))
    assert got == Fetched(cache / SHA256, SHA256, first_use=False)


# --- sha512 -------------------------------------------------------------------------------

def test_sha512_file_verified_and_sha256_recorded(httpserver, cache: Path) -> None:
    httpserver.expect_request(PATH).respond_with_data(BODY)
    httpserver.expect_request(PATH + ".sha512").respond_with_data(f"{SHA512}  {NAME}\n")
    got = fetch(URL, None, cache, checksum_url=URL + ".sha512", checksum="sha512",
                mirror=httpserver.url_for("/"))
    assert got == Fetched(cache / SHA256, SHA256, first_use=False)
    assert cached(cache) == [SHA256]


def test_sha512_mismatch_is_refused_and_nothing_cached(httpserver, cache: Path) -> None:
    wrong = "e" * 128
    httpserver.expect_request(PATH).respond_with_data(BODY)
    httpserver.expect_request(PATH + ".sha512").respond_with_data(f"{wrong}  {NAME}\n")
    with pytest.raises(BakeryError) as err:
        fetch(URL, None, cache, checksum_url=URL + ".sha512", checksum="sha512",
              mirror=httpserver.url_for("/"))
    assert err.value.message == (f"{URL}: sha512 mismatch: expected {wrong}, got {SHA512} "
                                 f"(from {URL}.sha512)")
    assert cached(cache) == []


# --- GitHub release asset digests ---------------------------------------------------------

GH_URL = "https://github.com/acme/tool/releases/download/v1.32.2%2Bk3s1/tool-arm64"
GH_DOWNLOAD = "/github.com/acme/tool/releases/download/v1.32.2+k3s1/tool-arm64"
GH_API = "/api.github.com/repos/acme/tool/releases/tags/v1.32.2+k3s1"


def release_json(*assets: dict) -> str:
    """A release as GitHub's REST API answers it (the fields the bakery reads, and more)."""
    return json.dumps({"url": "https://api.github.com/repos/acme/tool/releases/1",
                       "tag_name": "v1.32.2+k3s1", "draft": False, "prerelease": False,
                       "assets": [{"url": "https://api.github.com/repos/acme/tool/releases/assets/9",
                                   "content_type": "application/octet-stream", "size": 1,
                                   "browser_download_url": f"https://github.com/acme/tool/releases/download/v1.32.2%2Bk3s1/{a['name']}",
                                   **a} for a in assets]})


def test_github_digest(httpserver, cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GITHUB_TOKEN", "ghp_secret")
    httpserver.expect_request(GH_API, headers={"Authorization": "Bearer ghp_secret"}).respond_with_data(
        release_json({"name": "tool-amd64", "digest": "sha256:" + "1" * 64},
                     {"name": "tool-arm64", "digest": f"sha256:{SHA256}"}),
        content_type="application/json")
    httpserver.expect_request(GH_DOWNLOAD).respond_with_data(BODY)
    got = fetch(GH_URL, None, cache, checksum="github-digest", mirror=httpserver.url_for("/"))
    assert got == Fetched(cache / SHA256, SHA256, first_use=False)
    assert paths_asked(httpserver) == [GH_API, GH_DOWNLOAD]


def test_github_digest_mismatch_is_refused(httpserver, cache: Path) -> None:
    httpserver.expect_request(GH_API).respond_with_data(
        release_json({"name": "tool-arm64", "digest": "sha256:" + "2" * 64}))
    httpserver.expect_request(GH_DOWNLOAD).respond_with_data(BODY)
    with pytest.raises(BakeryError, match=f"sha256 mismatch: expected {'2' * 64}, got {SHA256} "
                                          r"\(from https://api.github.com/repos/acme/tool/"):
        fetch(GH_URL, None, cache, checksum="github-digest", mirror=httpserver.url_for("/"))
    assert cached(cache) == []


@pytest.mark.parametrize("asset, says", [
    ({"name": "tool-arm64", "digest": None}, "asset 'tool-arm64' has no sha256 digest (digest: null)"),
    ({"name": "tool-arm64"}, "asset 'tool-arm64' has no sha256 digest (no digest field)"),
    ({"name": "tool-arm64", "digest": "sha1:" + "a" * 40}, 'has no sha256 digest (digest: "sha1:'),
    ({"name": "tool-amd64", "digest": f"sha256:{SHA256}"}, "the release has no asset 'tool-arm64' (it has: tool-amd64)"),
])
def test_github_digest_missing_is_a_clear_error(asset: dict, says: str, httpserver,
                                                cache: Path) -> None:
    httpserver.expect_request(GH_API).respond_with_data(release_json(asset))
    with pytest.raises(BakeryError) as err:
        fetch(GH_URL, None, cache, checksum="github-digest", mirror=httpserver.url_for("/"))
    assert err.value.message.startswith(
        "https://api.github.com/repos/acme/tool/releases/tags/v1.32.2%2Bk3s1: ")
    assert says in err.value.message
    assert paths_asked(httpserver) == [GH_API]   # nothing downloaded unverified
    assert cached(cache) == []


@pytest.mark.parametrize("release, says", [
    ({"tag_name": "v1.32.2+k3s1"}, "the release has no 'assets' field"),
    ({"assets": {"tool-arm64": {}}}, "the release: 'assets' is a JSON object, expected an array"),
    ([], "the release is a JSON array, not an object"),
])
def test_a_release_answer_without_its_assets_is_a_clear_error(release, says: str, httpserver,
                                                              cache: Path) -> None:
    httpserver.expect_request(GH_API).respond_with_json(release)
    with pytest.raises(BakeryError) as err:
        fetch(GH_URL, None, cache, checksum="github-digest", mirror=httpserver.url_for("/"))
    assert err.value.message == (
        f"https://api.github.com/repos/acme/tool/releases/tags/v1.32.2%2Bk3s1: {says}")
    assert "not a GitHub release?" in err.value.hint
    assert cached(cache) == []


def test_github_digest_needs_a_release_download_url(cache: Path) -> None:
    with pytest.raises(BakeryError, match="needs a URL of the form https://github.com/"):
        fetch("https://example.org/tool-arm64", None, cache, checksum="github-digest")


# --- signed sums files --------------------------------------------------------------------

def gpg(key: GpgKey, *args: str, data: bytes = b"") -> bytes:
    return subprocess.run(["gpg", "--batch", "--quiet", "--homedir", str(key.gnupghome), *args],
                          input=data, check=True, capture_output=True).stdout


def armored_public(key: GpgKey, directory: Path) -> Path:
    path = directory / "upstream.asc"
    path.write_bytes(gpg(key, "--armor", "--export", key.fingerprint))
    return path


SUMS = f"{'1' * 64}  tool_1.2.3_linux_arm64.zip\n{SHA256}  {NAME}\n".encode()


def serve_signed(httpserver, sums: bytes, signature: bytes, body: bytes = BODY) -> None:
    httpserver.expect_request(PATH).respond_with_data(body)
    httpserver.expect_request(SUMS_PATH).respond_with_data(sums)
    httpserver.expect_request(SUMS_PATH + ".sig").respond_with_data(signature)


def fetch_signed(httpserver, cache: Path, key_file: Path) -> Fetched:
    return fetch(URL, None, cache, checksum_url=SUMS_URL, signature_url=SUMS_URL + ".sig",
                 signature_key=key_file, mirror=httpserver.url_for("/"))


def test_signed_sums_good_signature(httpserver, cache: Path, tmp_path: Path, gpg_key) -> None:
    serve_signed(httpserver, SUMS, gpg(gpg_key, "--detach-sign", "--output", "-", data=SUMS))
    got = fetch_signed(httpserver, cache, armored_public(gpg_key, tmp_path))
    assert got == Fetched(cache / SHA256, SHA256, first_use=False)


def test_signed_sums_tampered_sums_refused(httpserver, cache: Path, tmp_path: Path,
                                           gpg_key) -> None:
    signature = gpg(gpg_key, "--detach-sign", "--output", "-", data=SUMS)
    serve_signed(httpserver, SUMS.replace(SHA256.encode(), b"f" * 64), signature)
    key_file = armored_public(gpg_key, tmp_path)
    with pytest.raises(BakeryError) as err:
        fetch_signed(httpserver, cache, key_file)
    assert err.value.message == (f"{SUMS_URL}: the signature {SUMS_URL}.sig does not verify "
                                 f"against {key_file}")
    assert PATH not in paths_asked(httpserver) and cached(cache) == []


def test_signed_sums_tampered_signature_refused(httpserver, cache: Path, tmp_path: Path,
                                                gpg_key) -> None:
    signature = bytearray(gpg(gpg_key, "--detach-sign", "--output", "-", data=SUMS))
    signature[-5] ^= 0x40    # inside the signature value
    serve_signed(httpserver, SUMS, bytes(signature))
    with pytest.raises(BakeryError, match="does not verify against"):
        fetch_signed(httpserver, cache, armored_public(gpg_key, tmp_path))
    assert PATH not in paths_asked(httpserver) and cached(cache) == []


def test_signed_sums_by_another_key_refused(httpserver, cache: Path, tmp_path: Path,
                                            gpg_key, new_gpg_key) -> None:
    serve_signed(httpserver, SUMS, gpg(new_gpg_key, "--detach-sign", "--armor", "--output", "-",
                                       data=SUMS))
    with pytest.raises(BakeryError, match="does not verify against"):
        fetch_signed(httpserver, cache, armored_public(gpg_key, tmp_path))
    assert cached(cache) == []


def test_signed_sums_key_file_problems(httpserver, cache: Path, tmp_path: Path, gpg_key) -> None:
    serve_signed(httpserver, SUMS, gpg(gpg_key, "--detach-sign", "--output", "-", data=SUMS))
    with pytest.raises(BakeryError, match=r"missing\.asc: cannot read the signature key"):
        fetch_signed(httpserver, cache, tmp_path / "missing.asc")
    (tmp_path / "junk.asc").write_text("not a key\n")
    with pytest.raises(BakeryError, match=r"junk\.asc: holds no OpenPGP public key"):
        fetch_signed(httpserver, cache, tmp_path / "junk.asc")
    assert cached(cache) == []


def test_verify_detached_takes_binary_and_armored_keys(gpg_key, new_gpg_key) -> None:
    data = b"payload\n"
    signature = gpg(gpg_key, "--detach-sign", "--output", "-", data=data)
    armored = gpg(gpg_key, "--armor", "--export", gpg_key.fingerprint)
    assert verify_detached(data, signature, armored)
    assert verify_detached(data, signature, gpg_key.public)
    assert not verify_detached(data + b"x", signature, armored)
    assert not verify_detached(data, signature, new_gpg_key.public)
    assert not verify_detached(data, b"", armored)
    # a second signature by a key not given fails the whole file, as systemd-pull's gpg does
    both = signature + gpg(new_gpg_key, "--detach-sign", "--output", "-", data=data)
    assert not verify_detached(data, both, armored)
    assert not verify_detached(data, signature, b"garbage")


# --- recipe keys: since/until, per-source arch-names, companions --------------------------

RECIPE = """\
description = "Tool"
homepage = "https://example.org/"
arches = ["x86-64", "arm64"]

[arch-names]
x86-64 = "amd64"
arm64 = "arm64"
"""


def recipe(tmp_path: Path, sources: str, name: str = "tool"):
    path = tmp_path / "recipes" / f"{name}.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(RECIPE + textwrap.dedent(sources))
    return load_recipe(path, f"recipes/{name}.toml")


def urls(r, version: str, arch: str = "x86-64") -> list[str]:
    return [s.url for s in resolve_image(r, version, arch, None).sources]


def test_since_until_select_sources_in_systemd_order(tmp_path: Path) -> None:
    r = recipe(tmp_path, """
        [[sources]]
        url = "https://example.org/tool-{version}-{arch}.tgz"
        until = "0.14.0"
        install = { "bin/*" = "/usr/bin/" }

        [[sources]]
        url = "https://example.org/tool-{version}-{arch}.tar.zst"
        since = "0.14.0"
        install = { "bin/*" = "/usr/bin/" }

        [[sources]]
        url = "https://example.org/extra-{version}.tgz"
        since = "0.9.0"
        until = "0.10.0"
        install = { "extra" = "/usr/bin/extra" }
        """)
    assert urls(r, "0.13.9") == ["https://example.org/tool-0.13.9-amd64.tgz"]
    # numeric segments: 0.9.10 is after 0.9.0, 0.100 after 0.14.0
    assert urls(r, "0.9.10")[1:] == ["https://example.org/extra-0.9.10.tgz"]
    assert urls(r, "0.14.0") == ["https://example.org/tool-0.14.0-amd64.tar.zst"]
    assert urls(r, "0.14.0.1") == ["https://example.org/tool-0.14.0.1-amd64.tar.zst"]
    assert urls(r, "0.100") == ["https://example.org/tool-0.100-amd64.tar.zst"]
    assert urls(r, "0.10.0") == ["https://example.org/tool-0.10.0-amd64.tgz"]
    # the lock pins the sources that apply to its version: one here, not three
    with pytest.raises(BakeryError, match="pins 2 sources, recipes/tool.toml has 1 for x86-64 "
                                          "at version 0.14.0"):
        resolve_image(r, "0.14.0", "x86-64", [{"url": "https://example.org/a.tgz"}] * 2)


def test_per_source_arch_names(tmp_path: Path) -> None:
    r = recipe(tmp_path, """
        [[sources]]
        url = "https://github.com/k3s-io/k3s/releases/download/{version}/k3s{arch}"
        arch-names = { x86-64 = "", arm64 = "-arm64" }
        checksum-url = "https://github.com/k3s-io/k3s/releases/download/{version}/sha256sum-{arch}.txt"
        install = { "k3s*" = "/usr/bin/k3s" }

        [[sources]]
        url = "https://example.org/plugins-{arch}-{version}.tgz"
        install = { "*" = "/usr/lib/tool/" }
        """)
    x86, arm = (resolve_image(r, "v1.32.2+k3s1", a, None).sources for a in ("x86-64", "arm64"))
    assert x86[0].url == "https://github.com/k3s-io/k3s/releases/download/v1.32.2+k3s1/k3s"
    assert arm[0].url.endswith("/k3s-arm64")
    # a source's own names also fill its checksum-url; the recipe-level ones stay for the rest
    assert arm[0].checksum_url.endswith("/sha256sum--arm64.txt")
    assert [x86[1].url, arm[1].url] == ["https://example.org/plugins-amd64-v1.32.2+k3s1.tgz",
                                        "https://example.org/plugins-arm64-v1.32.2+k3s1.tgz"]


def test_signature_and_checksum_keys_resolve(tmp_path: Path) -> None:
    (tmp_path / "recipes" / "consul").mkdir(parents=True)
    (tmp_path / "recipes" / "consul" / "hashicorp.asc").write_text("key\n")
    r = recipe(tmp_path, """
        [[sources]]
        url = "https://releases.hashicorp.com/consul/{version}/consul_{version}_linux_{arch}.zip"
        checksum-url = "https://releases.hashicorp.com/consul/{version}/consul_{version}_SHA256SUMS"
        signature-url = "{checksum_url}.sig"
        signature-key = "hashicorp.asc"
        install = { "consul" = "/usr/bin/consul" }

        [[sources]]
        url = "https://github.com/acme/tool/releases/download/v{version}/tool-{arch}"
        checksum = "github-digest"
        install = { "tool-*" = "/usr/bin/tool" }
        """, name="consul")
    signed, github = resolve_image(r, "1.20.2", "arm64", None).sources
    assert signed.signature_url == ("https://releases.hashicorp.com/consul/1.20.2/"
                                    "consul_1.20.2_SHA256SUMS.sig")
    assert signed.signature_key == tmp_path / "recipes" / "consul" / "hashicorp.asc"
    assert (signed.checksum, github.checksum, github.checksum_url) == ("sha256", "github-digest", None)


@pytest.mark.parametrize("source, says", [
    ('checksum = "github-digest"\nchecksum-url = "{url}.sha256"',
     "sources[0].checksum-url: not with checksum = \"github-digest\""),
    ('checksum = "github-digest"',
     "sources[0].checksum: \"github-digest\" needs a url of the form https://github.com/"),
    ('checksum = "sha512"', "sources[0].checksum: 'sha512' is the algorithm of checksum-url, which is missing"),
    ('checksum = "md5"', "sources[0].checksum: 'md5' is not one of sha256, sha512, github-digest"),
    ('checksum-url = "{url}.sha256"\nsignature-url = "{checksum_url}.sig"',
     "sources[0].signature-key: missing: signature-url needs it"),
    ('signature-url = "{url}.sig"\nsignature-key = "k.asc"', "sources[0].signature-url: signs the checksum file: needs checksum-url"),
    ('checksum-url = "{url}.sha256"\nsignature-url = "{url}.sig"\nsignature-key = "k.asc"',
     "sources[0].signature-key: recipes/tool/k.asc does not exist"),
    ('signature-key = "../k.asc"', "sources[0].signature-key: '../k.asc' must be a file name in the recipe's directory"),
    ('signature-key = "files/k.asc"', "not under files/"),
    ('since = "1.0-rc1"', "sources[0].since: "),
    ('since = "2.0"\nuntil = "1.9"', "sources[0].until: '1.9' is not after since = '2.0'"),
    ('arch-names = { x86_64 = "amd64" }', "sources[0].arch-names.x86_64: unknown arch"),
])
def test_bad_source_keys_are_named(source: str, says: str, tmp_path: Path) -> None:
    with pytest.raises(BakeryError) as err:
        recipe(tmp_path, f"""
        [[sources]]
        url = "https://example.org/tool-{{version}}.tgz"
        install = {{ "tool" = "/usr/bin/tool" }}
        {textwrap.indent(source, ' ' * 8).strip()}
        """)
    assert says in err.value.message
    assert "recipes/tool.toml: " in err.value.message


def tar_gz(name: str, data: bytes) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        info = tarfile.TarInfo(name)
        info.size, info.mode = len(data), 0o755
        tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def zip_of(name: str, data: bytes) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        info = zipfile.ZipInfo(name)
        info.external_attr = 0o100755 << 16
        z.writestr(info, data)
    return out.getvalue()


def test_companion_source_recorded_per_version_in_the_lock(httpserver, tmp_path: Path) -> None:
    r = recipe(tmp_path, """
        [[sources]]
        url = "https://example.org/tool/{version}/tool-{arch}.tgz"
        checksum-url = "{url}.sha256"
        install = { "tool" = "/usr/bin/tool" }

        [[sources]]
        url = "https://example.org/runc/v{version}/runc.{arch}"
        version = "1.2.5"
        install = { "runc.*" = "/usr/bin/runc" }
        """)
    bodies = {v: tar_gz("tool", f"#!/bin/sh\necho {v}\n".encode()) for v in ("1.0.0", "1.1.0")}
    runc = b"#!/bin/sh\necho runc\n"
    for v, body in bodies.items():
        httpserver.expect_request(f"/example.org/tool/{v}/tool-amd64.tgz").respond_with_data(body)
        httpserver.expect_request(f"/example.org/tool/{v}/tool-amd64.tgz.sha256").respond_with_data(
            hashlib.sha256(body).hexdigest() + "\n")
    httpserver.expect_request("/example.org/runc/v1.2.5/runc.amd64").respond_with_data(runc)
    (tmp_path / "release").mkdir()
    lock_path = tmp_path / "release" / "lock.toml"
    lock_path.write_text('[tool."1.0.0"]\n\n[tool."1.1.0"]\n')
    settings = Settings(root=tmp_path, mirror=httpserver.url_for("/"))
    for v in bodies:
        image = resolve_image(r, v, "x86-64", None)
        paths = ImagePaths.of(settings, image.id)
        actions.fetch_image(image, settings, paths)
        actions.stage_image(image, settings, paths)   # a new sha256 is pinned once it staged

    lock = tomllib.loads(lock_path.read_text())
    runc_entry = {"url": "https://example.org/runc/v1.2.5/runc.amd64",
                  "sha256": hashlib.sha256(runc).hexdigest()}
    for v, body in bodies.items():
        assert lock["tool"][v]["x86-64"]["sources"] == [
            {"url": f"https://example.org/tool/{v}/tool-amd64.tgz",
             "sha256": hashlib.sha256(body).hexdigest()}, runc_entry]
    # pinned now: the next resolution takes URL and sha256 from the lock
    pinned = resolve_image(r, "1.1.0", "x86-64", lock["tool"]["1.1.0"]["x86-64"]["sources"])
    assert (pinned.sources[1].url, pinned.sources[1].sha256) == (runc_entry["url"],
                                                                 runc_entry["sha256"])


SIGNED_RECIPE = RECIPE + """
[[sources]]
url = "https://releases.example.org/tool/{version}/tool_{version}_linux_{arch}.zip"
checksum-url = "https://releases.example.org/tool/{version}/tool_{version}_SHA256SUMS"
signature-url = "{checksum_url}.sig"
signature-key = "upstream.asc"
install = { "tool" = "/usr/bin/tool" }
"""


def test_signed_sums_through_doit(project, httpserver, tmp_path: Path, gpg_key, new_gpg_key) -> None:
    (project.root / "recipes" / "tool.toml").write_text(SIGNED_RECIPE)
    (project.root / "recipes" / "tool").mkdir()
    armored_public(gpg_key, project.root / "recipes" / "tool")
    project.write_lock({"tool": {"1.2.3": {}}})
    body = zip_of("tool", b"#!/bin/sh\necho tool\n")
    digest = hashlib.sha256(body).hexdigest()
    sums = f"{'1' * 64}  tool_1.2.3_linux_arm64.zip\n{digest}  {NAME}\n".encode()
    serve_signed(httpserver, sums, gpg(new_gpg_key, "--detach-sign", "--output", "-", data=sums),
                 body)
    env = {"BAKERY_MIRROR": httpserver.url_for("/"), "BAKERY_ARCH": "x86-64"}

    refused = project.doit("stage:tool-1.2.3-x86-64", env=env, check=False)
    assert refused.returncode != 0
    said = refused.stdout + refused.stderr    # doit reports a failed task on stdout
    assert f"{SUMS_URL}: the signature {SUMS_URL}.sig does not verify against" in said
    assert "Traceback" not in said
    assert "sources" not in project.lock_path.read_text()

    httpserver.clear()
    serve_signed(httpserver, sums, gpg(gpg_key, "--detach-sign", "--output", "-", data=sums),
                 body)
    done = project.doit("stage:tool-1.2.3-x86-64", env=env)
    assert "trust on first use" not in done.stdout + done.stderr
    assert tomllib.loads(project.lock_path.read_text())["tool"]["1.2.3"]["x86-64"]["sources"] == [
        {"url": URL, "sha256": digest}]


def test_update_pins_signed_sums_only_when_the_signature_holds(project, httpserver, gpg_key,
                                                               new_gpg_key) -> None:
    from sysext_bakery.update.pins import Hasher, pin_version
    (project.root / "recipes" / "tool").mkdir()
    armored_public(gpg_key, project.root / "recipes" / "tool")
    (project.root / "recipes" / "tool.toml").write_text(SIGNED_RECIPE.replace(
        'arches = ["x86-64", "arm64"]', 'arches = ["x86-64"]'))
    r = load_recipe(project.root / "recipes" / "tool.toml", "recipes/tool.toml")
    hasher = Hasher(project.root / "cache", httpserver.url_for("/"))

    serve_signed(httpserver, SUMS, gpg(new_gpg_key, "--detach-sign", "--output", "-", data=SUMS))
    with pytest.raises(BakeryError, match="does not verify against"):
        pin_version(r, "1.2.3", hasher.sha256)
    httpserver.clear()
    serve_signed(httpserver, SUMS, gpg(gpg_key, "--detach-sign", "--output", "-", data=SUMS))
    assert pin_version(r, "1.2.3", hasher.sha256) == {"x86-64": [{"url": URL, "sha256": SHA256}]}
    assert hasher.tofu == []
