"""The GitHub Releases publisher against a loopback server implementing the documented REST
endpoints it uses (release by tag, create release, list/upload/delete assets)."""
from __future__ import annotations

import email.utils
import hashlib
import time

import git
import pytest

from sysext_bakery.publish import github as gh_publisher
from sysext_bakery.publish import sysupdate as release
from sysext_bakery.errors import BakeryError
from sysupdate import gpg_key  # noqa: F401
from test_publish import fake_image, run
from github_emulator import TOKEN, assets_of, github, project  # noqa: F401


def test_publishes_releases_and_skips_equal_assets(tmp_path, github, project, capsys):
    gh, api = github
    env = {"GITHUB_TOKEN": TOKEN, "GITHUB_API_URL": api}
    fake_image(tmp_path, "docker", "24.0.9", b"amd", stream="24")
    fake_image(tmp_path, "docker", "24.0.9", b"arm", stream="24", arch="arm64")
    dest = tmp_path / "pub"
    run(tmp_path, dest)
    config = release.ReleaseConfig(base_url="https://x.invalid/")
    uploaded = gh_publisher.publish_github(dest, "owner/bakery", config, project, env)
    assert "docker-24.0.9/docker-24.0.9-x86-64.raw" in uploaded

    per_version = assets_of(gh, "docker-24.0.9")
    assert set(per_version) == {"docker-24.0.9-x86-64.raw", "docker-24.0.9-arm64.raw", "SHA256SUMS",
                                "docker.conf", "docker.transfer", "docker-24.conf", "docker-24.transfer"}
    assert per_version["docker-24.0.9-x86-64.raw"] == b"amd"
    assert per_version["SHA256SUMS"] == (dest / "SHA256SUMS").read_bytes()
    meta = assets_of(gh, "metadata")
    assert {"SHA256SUMS", "noop.conf", "docker.conf", "index.json"} <= set(meta)
    assert not any(n.endswith(".raw") for n in meta)
    tag = git.Repo(project).tags["docker-24.0.9"]
    assert tag.tag is not None and tag.tag.message == "sysext docker 24.0.9"   # annotated

    gh.log.clear()
    assert gh_publisher.publish_github(dest, "owner/bakery", config, project, env) == []
    assert not [p for m, p in gh.log if m in ("POST", "DELETE")]

    # a new version: its own release; the metadata SHA256SUMS is replaced
    fake_image(tmp_path, "docker", "24.0.10", b"newer", stream="24")
    run(tmp_path, dest)
    uploaded = gh_publisher.publish_github(dest, "owner/bakery", config, project, env)
    assert "metadata/SHA256SUMS" in uploaded and "docker-24.0.10/docker-24.0.10-x86-64.raw" in uploaded
    assert assets_of(gh, "metadata")["SHA256SUMS"] == (dest / "SHA256SUMS").read_bytes()
    assert TOKEN not in capsys.readouterr().out


def test_retries_rate_limits_and_server_errors(tmp_path, github, project):
    gh, api = github
    fake_image(tmp_path, "docker", "24.0.9", b"amd")
    dest = tmp_path / "pub"
    run(tmp_path, dest)
    past = email.utils.formatdate(time.time() - 30, usegmt=True)
    gh.failures = [(502, {}), (429, {"Retry-After": "0"}), (429, {"Retry-After": past}),
                   (403, {"x-ratelimit-remaining": "0", "x-ratelimit-reset": "0"}), (503, {})]
    client = gh_publisher.GitHub("owner/bakery", TOKEN, api, backoff=0.01)
    rel = client.release("docker-24.0.9", None, "body")
    assert not gh.failures and rel["tag_name"] == "docker-24.0.9"
    assert client.sync(rel, {"a.raw": b"x"}) == ["a.raw"]


def test_errors_name_the_request_but_never_the_token(tmp_path, github, project):
    gh, api = github
    fake_image(tmp_path, "docker", "24.0.9", b"amd")
    dest = tmp_path / "pub"
    run(tmp_path, dest)
    config = release.ReleaseConfig(base_url="https://x.invalid/")
    with pytest.raises(BakeryError) as err:
        gh_publisher.publish_github(dest, "owner/bakery", config, project,
                               {"GITHUB_TOKEN": "wrong-token", "GITHUB_API_URL": api})
    assert "401" in str(err.value) and "wrong-token" not in str(err.value)
    gh.failures = [(500, {})] * 10
    client = gh_publisher.GitHub("owner/bakery", TOKEN, api, attempts=3, backoff=0.01)
    with pytest.raises(BakeryError, match="HTTP 500") as err:
        client.release("x-1", None, "")
    assert TOKEN not in str(err.value)
    with pytest.raises(BakeryError, match="GITHUB_TOKEN"):
        gh_publisher.publish_github(dest, "owner/bakery", config, project, {})


def test_an_upload_that_landed_despite_a_502_is_not_repeated(github, capsys):
    """GitHub stored the asset but the answer was a 502: a blind retry would meet a 422
    (name taken); the client lists the assets instead and finds its upload there."""
    gh, api = github
    client = gh_publisher.GitHub("owner/bakery", TOKEN, api, backoff=0.01)
    gh.fail_after = [502]                       # the release is created, the answer is lost
    rel = client.release("docker-24.0.9", None, "body")
    assert [r["tag_name"] for r in gh.releases.values()] == ["docker-24.0.9"]
    gh.fail_after = [502]
    gh.log.clear()
    assert client.sync(rel, {"a.raw": b"image"}) == ["a.raw"]
    assert gh.uploads == [(rel["id"], "a.raw")]           # exactly one upload
    assert assets_of(gh, "docker-24.0.9") == {"a.raw": b"image"}
    assert [m for m, _ in gh.log].count("POST") == 1
    assert "HTTP 502" not in capsys.readouterr().err       # nothing to retry: it had landed


def test_an_upload_that_did_not_land_is_retried(github, capsys):
    gh, api = github
    client = gh_publisher.GitHub("owner/bakery", TOKEN, api, backoff=0.01)
    rel = client.release("docker-24.0.9", None, "body")
    gh.fail_uploads = [502]                      # refused before storing anything
    assert client.sync(rel, {"a.raw": b"image"}) == ["a.raw"]
    assert gh.uploads == [(rel["id"], "a.raw")]
    assert assets_of(gh, "docker-24.0.9") == {"a.raw": b"image"}
    err = capsys.readouterr().err
    assert "retrying POST http://127.0.0.1:" in err and "(HTTP 502), attempt 1/5" in err
    assert TOKEN not in err


def test_images_go_up_before_the_manifest(tmp_path, github, project):
    gh, api = github
    fake_image(tmp_path, "docker", "24.0.9", b"amd", stream="24")
    fake_image(tmp_path, "docker", "24.0.9", b"arm", stream="24", arch="arm64")
    dest = tmp_path / "pub"
    run(tmp_path, dest)
    gh_publisher.publish_github(dest, "owner/bakery", release.ReleaseConfig("https://x.invalid/"),
                                project, {"GITHUB_TOKEN": TOKEN, "GITHUB_API_URL": api})
    rid = next(r["id"] for r in gh.releases.values() if r["tag_name"] == "docker-24.0.9")
    order = [name for r, name in gh.uploads if r == rid]
    assert order[-1] == "SHA256SUMS"
    assert set(order[:2]) == {"docker-24.0.9-x86-64.raw", "docker-24.0.9-arm64.raw"}
    assert sorted(["SHA256SUMS.gpg", "SHA256SUMS", "a.conf", "b.raw"],
                  key=gh_publisher.upload_order) == ["b.raw", "a.conf", "SHA256SUMS", "SHA256SUMS.gpg"]


def test_a_published_image_asset_is_never_replaced(tmp_path, github, project):
    gh, api = github
    env = {"GITHUB_TOKEN": TOKEN, "GITHUB_API_URL": api}
    config = release.ReleaseConfig("https://x.invalid/")
    fake_image(tmp_path, "docker", "24.0.9", b"first")
    dest = tmp_path / "pub"
    run(tmp_path, dest)
    gh_publisher.publish_github(dest, "owner/bakery", config, project, env)
    # the directory was published afresh (CI starts empty) from a build with other bytes
    fresh = tmp_path / "fresh"
    fake_image(fresh, "docker", "24.0.9", b"second")
    run(fresh, tmp_path / "pub2")
    on_github = "sha256:" + hashlib.sha256(b"first").hexdigest()
    gh.log.clear()
    with pytest.raises(BakeryError) as err:
        gh_publisher.publish_github(tmp_path / "pub2", "owner/bakery", config, project, env)
    assert on_github in str(err.value)
    assert hashlib.sha256(b"second").hexdigest() in str(err.value)
    assert "docker-24.0.9-x86-64.raw" in str(err.value)
    assert not [p for m, p in gh.log if m in ("POST", "DELETE")]
    assert assets_of(gh, "docker-24.0.9")["docker-24.0.9-x86-64.raw"] == b"first"


def test_a_version_release_gets_only_its_own_transfer_files(tmp_path, github, project):
    gh, api = github
    fake_image(tmp_path, "docker", "24.0.9", b"amd", stream="24")
    fake_image(tmp_path, "docker", "25.0.0", b"new", stream="25")
    dest = tmp_path / "pub"
    run(tmp_path, dest)
    (dest / "docker-compose.conf").write_text("another recipe's transfer\n")
    (dest / "docker-compose.transfer").write_text("another recipe's transfer\n")
    gh_publisher.publish_github(dest, "owner/bakery", release.ReleaseConfig("https://x.invalid/"),
                                project, {"GITHUB_TOKEN": TOKEN, "GITHUB_API_URL": api})
    assert {n for n in assets_of(gh, "docker-24.0.9") if not n.endswith(".raw")} == {
        "SHA256SUMS", "docker.conf", "docker.transfer", "docker-24.conf", "docker-24.transfer"}


def test_a_tag_without_a_committer_identity_says_how_to_set_one(project, monkeypatch):
    monkeypatch.setenv("HOME", str(project.parent))
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", "/dev/null")
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    for var in ("GIT_AUTHOR_NAME", "GIT_AUTHOR_EMAIL", "GIT_COMMITTER_NAME",
                "GIT_COMMITTER_EMAIL", "EMAIL"):
        monkeypatch.delenv(var, raising=False)
    git.Repo(project).config_writer().set_value("user", "useConfigOnly", "true").release()
    with pytest.raises(BakeryError) as err:
        gh_publisher.tag_locally(project, "docker-24.0.9", None, "sysext docker 24.0.9")
    assert "docker-24.0.9" in str(err.value) and "GIT_COMMITTER_EMAIL" in str(err.value)
    assert "docker-24.0.9" not in git.Repo(project).tags


def test_the_metadata_release_drops_assets_no_longer_published(tmp_path, github, project, gpg_key):
    """A release that went unsigned: SHA256SUMS.gpg and the key leave the metadata release
    too, rather than sit beside a SHA256SUMS they never signed."""
    from sysext_bakery.publish import sign
    gh, api = github
    env = {"GITHUB_TOKEN": TOKEN, "GITHUB_API_URL": api}
    config = release.ReleaseConfig("https://x.invalid/")
    fake_image(tmp_path, "docker", "24.0.9", b"amd")
    dest = tmp_path / "pub"
    with sign.signer_from_env({"BAKERY_SIGNING_KEY": gpg_key.armored_secret}) as signer:
        run(tmp_path, dest, signer)
    gh_publisher.publish_github(dest, "owner/bakery", config, project, env)
    assert {"SHA256SUMS.gpg", "bakery-signing-key.gpg"} <= set(assets_of(gh, "metadata"))
    version_assets = set(assets_of(gh, "docker-24.0.9"))

    fake_image(tmp_path, "docker", "24.0.10", b"newer")
    run(tmp_path, dest, allow_unsigned=True)
    gh_publisher.publish_github(dest, "owner/bakery", config, project, env)
    meta = assets_of(gh, "metadata")
    assert "SHA256SUMS.gpg" not in meta and "bakery-signing-key.gpg" not in meta
    assert meta["SHA256SUMS"] == (dest / "SHA256SUMS").read_bytes()
    assert {"docker.conf", "index.json", "noop.conf"} <= set(meta)
    assert set(assets_of(gh, "docker-24.0.9")) == version_assets   # the archive stays
    gh.log.clear()
    gh_publisher.publish_github(dest, "owner/bakery", config, project, env)
    assert not [p for m, p in gh.log if m in ("POST", "DELETE")]


@pytest.mark.parametrize("answer, said", [
    (b"[" * 100_000 + b"]" * 100_000, "not valid JSON: nested too deeply (more than 64 levels)"),
    # parses within Python's recursion limit, but past the bound every JSON answer shares
    (b'{"a": ' * 65 + b"1" + b"}" * 65, "not valid JSON: nested too deeply (more than 64 levels)"),
    (b"<html>Sign in</html>", "not valid JSON: Expecting value"),
    (b"[1, 2]", "the answer is a JSON array, not an object"),
    # JSON objects, but without what the publisher goes on to read
    (b'{"tag_name": "docker-24.0.9"}', "the answer has no 'id' field"),
    (b'{"id": true, "upload_url": "https://uploads.example/x"}', "'id' is a JSON boolean, expected an integer"),
    (b'{"id": 7, "upload_url": null}', "'upload_url' is a JSON null, expected a string"),
])
def test_a_hostile_or_foreign_answer_is_a_clear_error(github, answer: bytes, said: str):
    """The API's answers go through discovery's one JSON rule (model/reply.parse_json): a
    deeply nested answer is a BakeryError naming the request, not a RecursionError."""
    gh, api = github
    client = gh_publisher.GitHub("owner/bakery", TOKEN, api, attempts=2, backoff=0.01)
    gh.raw = [answer]
    with pytest.raises(BakeryError) as err:
        client.release("docker-24.0.9", None, "body")
    url = f"{api}/repos/owner/bakery/releases/tags/docker-24.0.9"
    assert err.value.message.startswith(f"GitHub: {url}: ")
    assert said in err.value.message and "GITHUB_API_URL" in err.value.hint
    assert len(err.value.message) < 300 and TOKEN not in str(err.value)
    # the asset list must be a list of objects
    rel = client.release("docker-24.0.9", None, "body")
    gh.raw = [b'[{"name": "a.raw", "id": 3}, "b.raw"]']
    with pytest.raises(BakeryError, match="entry 1 of the answer is a JSON string, not an object"):
        client.assets(rel)
    gh.raw = [b'{"name": "a.raw", "id": 3}']
    with pytest.raises(BakeryError, match="the answer is a JSON object, not an array"):
        client.assets(rel)
    gh.raw = [b'[{"name": "a.raw", "id": 3}, {"name": "b.raw"}]']
    with pytest.raises(BakeryError, match="entry 1 of the answer has no 'id' field"):
        client.assets(rel)


def without(key: str, value=None):
    """An answer (an object, or the first entry of a list) without `key`, or with `value`."""
    def change(obj: dict) -> dict:
        return {k: v for k, v in obj.items() if k != key} | ({key: value} if value else {})
    return lambda doc: [change(doc[0]), *doc[1:]] if isinstance(doc, list) else change(doc)


@pytest.mark.parametrize("step, change, said", [
    ("get release", without("id"), "the answer has no 'id' field"),
    ("get release", without("upload_url"), "the answer has no 'upload_url' field"),
    ("get release", without("upload_url", 7), "the answer: 'upload_url' is a JSON integer, "
                                              "expected a string"),
    ("get release", without("id", "12"), "the answer: 'id' is a JSON string, expected an integer"),
    ("get release", without("id", True), "the answer: 'id' is a JSON boolean, expected an integer"),
    ("get release", without("upload_url", "uploads/{?name}"), "the release's 'upload_url' is "
                                                             "unusable: URL 'uploads/' must start"),
    ("create release", without("id"), "the answer has no 'id' field"),
    ("create release", without("upload_url"), "the answer has no 'upload_url' field"),
    ("list assets", without("name"), "entry 0 of the answer has no 'name' field"),
    ("list assets", without("id"), "entry 0 of the answer has no 'id' field"),
    ("list assets", without("name", ["a.conf"]), "entry 0 of the answer: 'name' is a JSON array, "
                                                 "expected a string"),
    ("upload", without("id"), "the answer has no 'id' field"),
])
def test_an_answer_without_a_documented_field_is_a_clear_error(github, step, change, said):
    """A well-formed answer lacking a field the publisher reads (or with another type) is a
    BakeryError naming the request and the field, never a KeyError or TypeError."""
    gh, api = github
    client = gh_publisher.GitHub("owner/bakery", TOKEN, api, attempts=2, backoff=0.01)
    releases = f"{api}/repos/owner/bakery/releases"
    if step != "create release":
        rel = client.release("docker-24.0.9", None, "body")
        client.sync(rel, {"docker.conf": b"[Transfer]\n"})
    call = {"get release": lambda: client.release("docker-24.0.9", None, "body"),
            "create release": lambda: client.release("docker-24.0.10", None, "body"),
            "list assets": lambda: client.assets(rel),
            "upload": lambda: client.sync(rel, {"docker-24.0.9-x86-64.raw": b"image"})}[step]
    url = {"get release": f"{releases}/tags/docker-24.0.9", "create release": releases,
           "list assets": f"{releases}/", "upload": f"{api}/uploads/repos/owner/bakery/releases/"}
    # the upload's first successful answer is the asset list it looks at first
    gh.mangle = [lambda doc: doc, change] if step == "upload" else [change]
    with pytest.raises(BakeryError) as err:
        call()
    assert err.value.message.startswith(f"GitHub: {url[step]}"), err.value.message
    assert said in err.value.message, err.value.message
    assert "GITHUB_API_URL" in err.value.hint and TOKEN not in str(err.value)
    assert not gh.mangle   # the answer meant was the one refused


@pytest.mark.parametrize("name", ["SHA256SUMS", "index.json"])
def test_a_published_file_that_is_not_utf8_is_named_before_any_request(tmp_path, github, project,
                                                                        name):
    gh, api = github
    fake_image(tmp_path, "docker", "24.0.9", b"amd")
    dest = tmp_path / "pub"
    run(tmp_path, dest)
    (dest / name).write_bytes(b"\xff" + (dest / name).read_bytes())
    with pytest.raises(BakeryError) as err:
        gh_publisher.publish_github(dest, "owner/bakery", release.ReleaseConfig("https://x.invalid/"),
                                    project, {"GITHUB_TOKEN": TOKEN, "GITHUB_API_URL": api})
    assert err.value.message.startswith(f"{dest / name}: ") and "utf-8" in err.value.message.lower()
    assert gh.log == []


@pytest.mark.parametrize("name", ["SHA256SUMS", "index.json"])
def test_a_published_file_past_the_index_limit_is_named_before_any_request(tmp_path, github,
                                                                           project, name):
    gh, api = github
    fake_image(tmp_path, "docker", "24.0.9", b"amd")
    dest = tmp_path / "pub"
    run(tmp_path, dest)
    with (dest / name).open("ab") as f:
        f.truncate(release.MAX_INDEX + 1)          # sparse: no disk space spent
    with pytest.raises(BakeryError) as err:
        gh_publisher.publish_github(dest, "owner/bakery", release.ReleaseConfig("https://x.invalid/"),
                                    project, {"GITHUB_TOKEN": TOKEN, "GITHUB_API_URL": api})
    assert err.value.message.startswith(f"{dest / name}: larger than "), err.value.message
    assert gh.log == []


@pytest.mark.parametrize("change, said", [
    (lambda images: images[0].update(revision="--output=/tmp/x"),
     "images[0] ('docker'): revision '--output=/tmp/x' is not a full git commit id"),
    (lambda images: images.append(dict(images[0], sha256="b" * 64)),
     "images[1] ('docker'): docker-24.0.9-x86-64.raw is also images[0], with another sha256"),
])
def test_a_tampered_index_is_named_before_any_request_or_tag(tmp_path, github, project, change,
                                                             said):
    """The revision of index.json becomes the tag's commit (git) and `target_commitish`
    (GitHub); a second entry for one file another sha256: neither gets that far."""
    import json
    gh, api = github
    fake_image(tmp_path, "docker", "24.0.9", b"amd")
    dest = tmp_path / "pub"
    run(tmp_path, dest)
    doc = json.loads((dest / "index.json").read_text())
    change(doc["images"])
    (dest / "index.json").write_text(json.dumps(doc))
    with pytest.raises(BakeryError) as err:
        gh_publisher.publish_github(dest, "owner/bakery", release.ReleaseConfig("https://x.invalid/"),
                                    project, {"GITHUB_TOKEN": TOKEN, "GITHUB_API_URL": api})
    assert err.value.message.startswith(f"{dest / 'index.json'}: not a bakery index.json: {said}")
    assert gh.log == [] and not git.Repo(project).tags


# ---- where the token may go: the API and its one upload origin ---------------------------

