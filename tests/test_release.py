"""The pure release rules: config, names and patterns, merge and immutability, templates;
and the `release` doit task run on a project directory."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from sysext_bakery.publish import directory as publish
from sysext_bakery.publish import keys
from sysext_bakery.publish import sysupdate as release
from sysext_bakery import tasks
from sysext_bakery.errors import BakeryError
from test_publish import fake_image

REPO = Path(__file__).resolve().parent.parent


def test_release_toml_of_the_repo_parses():
    config = release.parse_config((REPO / "release/release.toml").read_text(), "release.toml")
    assert config.base_url.endswith("/") and config.instances_max == 3


@pytest.mark.parametrize("text, key", [
    ('base_url = "ftp://x/"', "base_url"),
    ('base_url = "https://x/"\ninstances_max = 1', "instances_max"),
    ('base_url = "https://x/"\nbogus = 1', "bogus"),
    ('base_url = "https://x/"\n[github]\nrepo = "no-slash"', "github.repo"),
    ('base_url = ', "TOML"),
    ('base_url = "https://x/"\n[signing]\nfingerprint = "2C067D10"', "signing.fingerprint"),
    ('base_url = "https://x/"\n[signing]\nfingerprint = "' + "41E4 306E " * 4 + '"',
     "signing.fingerprint"),
    ('base_url = "https://x/"\n[signing]\nfingerprint = ""', "signing.fingerprint"),
    ('base_url = "https://x/"\n[signing]\nfingerprint = "' + "A" * 40 + '\\n"', "signing.fingerprint"),   # TOML's escaped newline
    ('base_url = "https://x/"\n[signing]\nnext = "' + "A" * 40 + '"', "signing.next"),
    ('base_url = "https://x/"\n[signing]\nfingerprint = "' + "a" * 40 + '"\nnext = "' + "A" * 40 + '"',
     "signing.next"),
    ('base_url = "https://x/"\n[signing]\nkey = "' + "A" * 40 + '"', "signing"),
    ('base_url = "https://x/"\nsigning = "' + "A" * 40 + '"', "signing"),
])
def test_bad_config_names_the_key(text, key):
    with pytest.raises(BakeryError) as err:
        release.parse_config(text, "release/release.toml")
    assert "release/release.toml" in str(err.value) and key in str(err.value)


def test_signing_fingerprints_are_read_in_upper_case():
    config = release.parse_config('base_url = "https://x/"\n[signing]\nfingerprint = "'
                                  + "ab" * 20 + '"\nnext = "' + "CD" * 20 + '"', "release.toml")
    assert (config.signing_key, config.next_signing_key) == ("AB" * 20, "CD" * 20)
    assert release.parse_config('base_url = "https://x/"', "r").signing_key is None


@pytest.mark.parametrize("names, clash", [
    (["docker", "docker-compose"], "docker-compose"),
    (["kubernetes", "kubernetes-v1.32", "wasmtime"], "kubernetes-v1.32"),
    (["a", "a-b", "a-b-c"], "a-b"),
])
def test_a_name_that_another_names_transfer_matches_is_refused(names, clash):
    with pytest.raises(BakeryError) as err:
        release.check_names(names)
    assert f"'{names[0]}'" in str(err.value) and f"'{clash}'" in str(err.value)
    assert "docs/release.md" in str(err.value)


def test_names_that_no_other_transfer_matches_pass():
    release.check_names(["docker", "dockerd", "docker_compose", "compose-docker", "wasmtime"])
    with pytest.raises(BakeryError, match="noop.conf"):
        release.check_names(["noop", "docker"])


def test_a_bad_template_placeholder_is_named():
    templates = publish.load_templates(REPO / "release/templates")
    templates["transfer.conf"] += "Foo=${nope}\n"
    image = release.PublishedImage("x", "1.0", "x86-64", "a" * 64, 1)
    with pytest.raises(BakeryError, match=r"transfer.conf.*nope"):
        release.render_release([image], release.ReleaseConfig("https://x/"), templates, None)


def test_bad_provenance_is_named(tmp_path):
    with pytest.raises(BakeryError, match="state/images/x.json"):
        release.parse_provenance('{"name": "x"}', "build/state/images/x.json")


def test_release_task_publishes_what_is_built(tmp_path, capsys, monkeypatch):
    root = tmp_path / "project"
    shutil.copytree(REPO / "release", root / "release")
    fake_image(root / "build", "docker", "24.0.9", b"img")
    monkeypatch.delenv("BAKERY_SIGNING_KEY", raising=False)
    monkeypatch.delenv("BAKERY_SIGNING_KEY_ID", raising=False)
    task = tasks.release_task(root)
    assert task["basename"] == "release" and task["uptodate"] == [False]
    defaults = {p["name"]: p["default"] for p in task["params"]}
    assert set(defaults) == {"dest", "base_url", "github", "repo", "allow_unsigned", "rotate_key"}
    action = task["actions"][0]
    mirror = {**defaults, "dest": "out", "base_url": "https://mirror.example.invalid/x"}
    assert action(**mirror) is None
    assert "published 1 image(s)" in capsys.readouterr().out
    assert "Path=https://mirror.example.invalid/x/" in (root / "out/docker.conf").read_text()
    assert action(**mirror) is None
    assert "nothing to publish" in capsys.readouterr().out
    failed = action(**{**defaults, "dest": "out", "github": True})
    assert "GitHub repository" in str(failed)


OLD, NEW, OTHER = "A" * 40, "B" * 40, "C" * 40


@pytest.mark.parametrize("configured, next_key, signer, published, flags, keyring", [
    (OLD, None, OLD, (), {}, (OLD,)),
    (OLD, NEW, OLD, (OLD,), {}, (OLD, NEW)),                        # phase 1
    (OLD, NEW, NEW, (OLD, NEW), {"rotate_key": True}, (OLD, NEW)),  # phase 2
    (NEW, None, NEW, (OLD, NEW), {}, (NEW,)),                       # done
    (NEW, None, NEW, (OLD,), {"rotate_key": True}, (NEW,)),         # at once (compromised key)
    (OLD, None, None, (OLD,), {"allow_unsigned": True}, ()),
    (None, None, None, (), {}, ()),
])
def test_key_plans_that_go_ahead(configured, next_key, signer, published, flags, keyring):
    plan = keys.plan(configured, next_key, signer, published, bool(published), "pub", **flags)
    assert plan == keys.KeyPlan(signer, keyring)


@pytest.mark.parametrize("configured, next_key, signer, published, flags, named", [
    (OLD, None, NEW, (), {}, [OLD, NEW, "--rotate-key"]),
    (OLD, None, NEW, (), {"rotate_key": True}, ["not announced", "next"]),
    (OLD, OTHER, NEW, (), {"rotate_key": True}, ["not announced", OTHER]),
    (OLD, NEW, NEW, (OLD,), {"rotate_key": True}, ["never offered", OLD]),   # phase 1 skipped here
    (NEW, None, NEW, (OLD,), {}, [OLD, NEW, "--rotate-key"]),
    (OLD, None, OLD, (OLD,), {"rotate_key": True}, ["nothing to rotate"]),
    (OLD, None, None, (), {}, [OLD, "--allow-unsigned"]),
    (None, None, None, (OLD,), {}, ["signed release", "--allow-unsigned"]),
    (None, None, OLD, (), {}, [f'fingerprint = "{OLD}"']),
])
def test_key_plans_that_are_refused(configured, next_key, signer, published, flags, named):
    with pytest.raises(BakeryError) as err:
        keys.plan(configured, next_key, signer, published, bool(published), "pub", **flags)
    for part in named:
        assert part in str(err.value)


def test_the_key_that_signs_when_the_secret_holds_two():
    assert keys.choose_key((NEW, OLD), OLD, NEW, rotate_key=False) == OLD
    assert keys.choose_key((NEW, OLD), OLD, NEW, rotate_key=True) == NEW
    assert keys.choose_key((OTHER,), OLD, None, rotate_key=False) == OTHER   # then refused


GOOD = release.PublishedImage("docker", "24.0.9", "x86-64", "a" * 64, 5, stream="24",
                              sources=(("https://example.invalid/d.tgz", None),),
                              revision="0123abcd" * 5, built="2026-01-01T00:00:00Z",
                              replaces=("docker-flatcar",), conflicts=("podman",))


def entry(**changes) -> dict:
    """GOOD's index.json entry, with `changes` (a value of DROP removes the key)."""
    [doc] = json.loads(release.index_json([GOOD]))["images"]
    doc.update(changes)
    return {k: v for k, v in doc.items() if v is not DROP}


DROP = object()
OF = "pub/index.json: not a bakery index.json: "


@pytest.mark.parametrize("doc, said", [
    ([], "the index is a JSON array, not an object"),
    ({"images": {"docker": {}}}, "the index: 'images' is a JSON object, expected an array"),
    ({}, "the index has no 'images' field"),
    ({"images": [entry(), 3]}, "images[1] is a JSON integer, not an object"),
    ({"images": [entry(size="x")]}, "images[0] ('docker'): 'size' is a JSON string, expected an integer"),
    ({"images": [entry(size=True)]}, "images[0] ('docker'): 'size' is a JSON boolean, expected an integer"),
    ({"images": [entry(size=-1)]}, "images[0] ('docker'): size -1 is negative"),
    ({"images": [entry(version=24)]}, "images[0] ('docker'): 'version' is a JSON integer, expected a string"),
    ({"images": [entry(sha256=DROP)]}, "images[0] ('docker') has no 'sha256' field"),
    ({"images": [entry(name=["docker"])]}, "images[0]: 'name' is a JSON array, expected a string"),
    ({"images": [entry(arch="i386")]}, "images[0] ('docker'): arch 'i386' is not one of"),
    ({"images": [entry(sha256="A" * 64)]}, "images[0] ('docker'): sha256 'AAAA"),
    ({"images": [entry(stream={"major": 24})]}, "images[0] ('docker'): 'stream' is a JSON object, expected a string"),
    ({"images": [entry(revision=1)]}, "images[0] ('docker'): 'revision' is a JSON integer, expected a string"),
    ({"images": [entry(built=[])]}, "images[0] ('docker'): 'built' is a JSON array, expected a string"),
    ({"images": [entry(sources={"url": "x"})]}, "images[0] ('docker'): 'sources' is a JSON object, expected an array"),
    ({"images": [entry(sources=["https://x"])]}, "images[0] ('docker'): sources[0] is a JSON string, not an object"),
    ({"images": [entry(sources=[{"sha256": "ab"}])]}, "images[0] ('docker'): sources[0] has no 'url' field"),
    ({"images": [entry(sources=[{"url": "u", "sha256": 1}])]},
     "images[0] ('docker'): sources[0]: 'sha256' is a JSON integer, expected a string"),
    ({"images": [entry(replaces="docker-flatcar")]}, "images[0] ('docker'): 'replaces' is a JSON string, expected an array"),
    ({"images": [entry(conflicts=[None])]}, "images[0] ('docker'): 'conflicts'[0] is a JSON null, expected a string"),
    ({"images": [entry(replaces=["../x"])]}, "images[0] ('docker'): 'replaces'[0]: name '../x' must be"),
    # the file names the publishers read and write in the published directory
    ({"images": [entry(name="../x")]}, "images[0] ('../x'): name '../x' must be"),
    ({"images": [entry(version="1/../../x")]}, "images[0] ('docker'): version '1/../../x'"),
    # a stream names the stream's transfer files (<name>-<stream>.conf) and goes into their
    # MatchPattern=: neither a path nor a line of its own
    ({"images": [entry(stream="24/../../x")]}, "images[0] ('docker'): stream '24/../../x': "),
    ({"images": [entry(stream="24\n[Source]")]}, "images[0] ('docker'): stream '24\\n[Source]': "),
    ({"images": [entry(stream="24-1")]}, "images[0] ('docker'): stream '24-1': "),
    # the revision is the commit a release tag points at (target_commitish, git): a commit
    # id as git rev-parse HEAD prints it, never an option, a ref name or an abbreviation
    ({"images": [entry(revision="--output=/tmp/x")]},
     "images[0] ('docker'): revision '--output=/tmp/x' is not a full git commit id"),
    ({"images": [entry(revision="main")]}, "images[0] ('docker'): revision 'main' is not"),
    ({"images": [entry(revision="0123abcd")]}, "images[0] ('docker'): revision '0123abcd' is not"),
    ({"images": [entry(revision="AB" * 20)]}, "images[0] ('docker'): revision 'ABAB"),
    ({"images": [entry(revision="ab" * 20 + "\n")]}, "images[0] ('docker'): revision 'abab"),
    ({"images": [entry(revision="ab" * 24)]}, "images[0] ('docker'): revision 'abab"),
])
def test_an_index_entry_of_the_wrong_shape_names_entry_key_and_type(doc, said):
    """index.json is read back from directories, URLs and GitHub that may be damaged: each
    field is checked where it is read (model/reply's json_field), never a traceback or a
    wrong value (a string size, a number version) later."""
    with pytest.raises(BakeryError) as err:
        release.parse_index(json.dumps(doc), "pub/index.json")
    assert err.value.message.startswith(OF + said), err.value.message
    assert "pub/index.json" in err.value.hint


def test_a_tampered_stream_in_a_published_index_writes_nothing_anywhere(tmp_path):
    """A republish renders <name>-<stream>.conf from the published index.json: a stream of
    `../` wrote transfer files outside the published directory."""
    import hashlib
    dest = tmp_path / "pub" / "site"
    dest.mkdir(parents=True)
    (dest / "docker-24.0.9-x86-64.raw").write_bytes(b"image")
    sha = hashlib.sha256(b"image").hexdigest()
    (dest / "SHA256SUMS").write_text(f"{sha}  docker-24.0.9-x86-64.raw\n")
    (dest / "index.json").write_text(json.dumps({"images": [
        entry(sha256=sha, size=5, stream="24/../../../evil")]}))
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    config = release.ReleaseConfig(base_url="https://example.com/ext/")
    with pytest.raises(BakeryError) as err:
        publish.publish_directory([], dest, config, publish.load_templates(REPO / "release/templates"),
                                  None, None, allow_unsigned=True)
    assert "stream '24/../../../evil'" in err.value.message
    after = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.name != ".publish.lock")
    assert after == before


def test_a_revision_is_a_sha1_or_sha256_commit_id():
    for revision in ("0123abcd" * 5, "0123abcd" * 8):
        assert release.parse_index(json.dumps({"images": [entry(revision=revision)]}),
                                   "i")[0].revision == revision


def test_two_index_entries_for_one_image_file_with_other_facts_are_refused():
    """index.json is read back from directories and GitHub that may be damaged: a second
    entry for one file let the last win (another sha256 for hosts, another revision to
    tag). The same entry twice says one thing and reads back once."""
    other = entry(sha256="b" * 64, revision="ab" * 20)
    with pytest.raises(BakeryError) as err:
        release.parse_index(json.dumps({"images": [entry(), entry(version="25.0"), other]}),
                            "pub/index.json")
    assert err.value.message == (OF + "images[2] ('docker'): docker-24.0.9-x86-64.raw is also "
                                 "images[0], with another sha256, revision")
    assert "pub/index.json" in err.value.hint
    assert release.parse_index(json.dumps({"images": [entry(), entry()]}), "i") == [GOOD]


def test_an_index_entry_reads_back_as_written_and_absent_optional_fields_are_none():
    assert release.parse_index(release.index_json([GOOD]), "i") == [GOOD]
    bare = entry(stream=DROP, sources=DROP, revision=None, built=DROP, replaces=DROP,
                 conflicts=DROP)
    assert release.parse_index(json.dumps({"images": [bare]}), "i") == [
        release.PublishedImage("docker", "24.0.9", "x86-64", "a" * 64, 5)]


@pytest.mark.parametrize("changes, said", [
    ({"size": "5"}, "the record: 'size' is a JSON string, expected an integer"),
    ({"version": 1.5}, "the record: 'version' is a JSON number, expected a string"),
    ({"name": DROP}, "the record has no 'name' field"),
    ({"sources": [7]}, "the record: sources[0] is a JSON integer, not an object"),
    ({"replaces": [1]}, "the record: 'replaces'[0] is a JSON integer, expected a string"),
    ({"revision": "--upload-pack=x"}, "the record: revision '--upload-pack=x' is not a full git "
                                      "commit id (40 or 64 lower-case hex digits, as git "
                                      "rev-parse HEAD prints)"),
])
def test_a_provenance_field_of_the_wrong_type_is_named(changes, said):
    doc = entry(**changes)
    with pytest.raises(BakeryError) as err:
        release.parse_provenance(json.dumps(doc), "build/state/images/docker-24.0.9-x86-64.json")
    assert err.value.message == ("build/state/images/docker-24.0.9-x86-64.json: not a valid "
                                 "image provenance file: " + said), err.value.message
    assert "doit pack:docker-24.0.9-x86-64" in err.value.hint
    with pytest.raises(BakeryError) as err:     # nor bytes that are not UTF-8
        release.parse_provenance(b'{"name": "\xff"}', "build/state/images/x.json")
    assert "x.json: not a valid image provenance file: line 1: not valid UTF-8" in err.value.message
