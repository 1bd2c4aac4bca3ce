"""Hand-written inputs under attack (issue 13, guarantee 3): recipes, the lock, release.toml,
versions.toml and torcx profiles, taken from the repository and mutated (random bytes, bad
UTF-8, deep nesting, huge integers, 100,000-character strings, format-spec placeholders),
either load or give one BakeryError that names the file, in a message of bounded size;
never another exception."""
from __future__ import annotations

import json
import shutil
import tempfile
import tracemalloc
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from sysext_bakery import inputs
from sysext_bakery.errors import BakeryError
from sysext_bakery.publish import sysupdate
from sysext_bakery.recipe import lock
from sysext_bakery.recipe.load import load_recipe, load_recipes, resolve_image
from sysext_bakery.torcx.profile import load_profile
from sysext_bakery.update import desired

REPO = Path(__file__).resolve().parent.parent
RECIPES = {p.name: p.read_bytes() for p in sorted((REPO / "recipes").glob("*.toml"))}
LOCK = (REPO / "release/lock.toml").read_bytes()
RELEASE = (REPO / "release/release.toml").read_bytes()
VERSIONS = (REPO / "release/versions.toml").read_bytes()
PROFILE = json.dumps({"kind": "profile-manifest-v0", "value": {"images": [
    {"name": "docker", "reference": "com.coreos.cl"}, {"name": "tool", "reference": "1.0"}]}},
    indent=1).encode()

# What an attacker writes into a file: each is inserted at a line start or replaces a value.
NASTY = [
    b"x = " + b"9" * 5000,
    b"x = 0x" + b"f" * 5000,                       # escapes Python's digit limit
    b"x = -170141183460469231731687303715884105728",
    b"x = " + b"[" * 5000 + b"]" * 5000,
    b"x = " + b"[" * 40 + b"]" * 40,
    b"x = " + b"{a = " * 3000 + b"1" + b"}" * 3000,
    b"a" + b".a" * 3000 + b" = 1",                   # dotted keys: deep without recursion
    b'x = "' + b"1" * 100_000 + b'"',
    b'"' + b"k" * 100_000 + b'" = 1',
    b"\xff\xfe\x00",
    b"\xc3(",
    b'url = "https://h/{arch:>99999}"',
    b'url = "https://h/{arch!r}"',
    b'url = "https://h/{version.__class__}"',
    b'url = "https://h/{arch[0]}{"',
    b"[" * 3000,
    b'"' + b"\\u0000" * 10 + b'" = 1',
]
REPLACEMENTS = [  # (what, by): applied to every occurrence
    (b"{arch}", b"{arch:>99999}"), (b"{arch}", b"{arch!r}"), (b"{version}", b"{version:{arch}}"),
    (b"{version}", b"{version.real}"), (b"29.0.1", b"1" * 100_000), (b'"x86-64"', b"1" * 5000),
    (b'"https://', b'"' + b"h" * 100_000), (b"= 3", b"= 0x" + b"7" * 400), (b"images", b"imag\xe9s"),
    (b'"reference"', b'"reference", "reference": ' + b"[" * 5000),
]


@st.composite
def mutated(draw: st.DrawFn, original: bytes) -> bytes:
    data = bytearray(original)
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["nasty", "replace", "flip", "cut", "splice"]))
        pos = draw(st.integers(0, max(len(data) - 1, 0)))
        if kind == "nasty":
            line = data.rfind(b"\n", 0, pos) + 1
            data[line:line] = draw(st.sampled_from(NASTY)) + b"\n"
        elif kind == "replace":
            what, by = draw(st.sampled_from(REPLACEMENTS))
            data = bytearray(bytes(data).replace(what, by))
        elif kind == "flip" and data:
            data[pos] = draw(st.integers(0, 255))
        elif kind == "cut":
            del data[pos:pos + draw(st.integers(1, 200))]
        else:
            data[pos:pos] = draw(st.binary(max_size=40))
    return bytes(data)


def assert_clean(e: BakeryError, shown: str) -> None:
    text = str(e)
    assert text.startswith(shown), text[:300]
    assert max(len(line) for line in text.splitlines()) < 1000, text[:300]
    assert len(text) < 20_000


FUZZ = settings(max_examples=60, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@FUZZ
@given(st.sampled_from(sorted(RECIPES)).flatmap(lambda n: st.tuples(st.just(n), mutated(RECIPES[n]))))
def test_fuzzed_recipes_load_or_name_the_file(case: tuple[str, bytes]) -> None:
    name, data = case
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / name
        path.write_bytes(data)
        try:
            recipe = load_recipe(path, f"recipes/{name}")
        except BakeryError as e:
            assert_clean(e, f"recipes/{name}")
            return
        for arch in recipe.arches:   # a recipe that loads renders its URLs
            try:
                resolve_image(recipe, "1.2.3", arch, None)
            except BakeryError as e:
                assert_clean(e, "release/lock.toml")


@FUZZ
@given(mutated(LOCK))
def test_fuzzed_locks_load_or_name_the_file_and_key(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "lock.toml"
        path.write_bytes(data)
        try:
            pins, refused = lock.load_checked(path, "release/lock.toml")
        except BakeryError as e:
            assert_clean(e, "release/lock.toml")
            return
        for r in refused:
            assert_clean(r.error, "release/lock.toml: ")


@FUZZ
@given(mutated(RELEASE))
def test_fuzzed_release_config_loads_or_names_the_file(data: bytes) -> None:
    try:
        sysupdate.parse_config(data, "release/release.toml")
    except BakeryError as e:
        assert_clean(e, "release/release.toml")


@FUZZ
@given(mutated(VERSIONS))
def test_fuzzed_versions_load_or_name_the_file(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "versions.toml"
        path.write_bytes(data)
        try:
            desired.load(path, "release/versions.toml")
        except BakeryError as e:
            assert_clean(e, "release/versions.toml")


@FUZZ
@given(mutated(PROFILE))
def test_fuzzed_torcx_profiles_load_or_name_the_file(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "vendor.json"
        path.write_bytes(data)
        try:
            load_profile(path)
        except BakeryError as e:
            assert_clean(e, str(path))


# --- each attack by name, with the key it must name ------------------------------------------

WASMTIME = RECIPES["wasmtime.toml"]
NL = b"\n"


@pytest.mark.parametrize("data, message", [
    (WASMTIME + b'\ndescription2 = "\xff"\n',
     f"recipes/wasmtime.toml: line {WASMTIME.count(NL) + 2}: not valid UTF-8 (byte 0xff)"),
    (WASMTIME.replace(b"streams", b"x = " + b"9" * 5000 + b"\nstreams"),
     "recipes/wasmtime.toml: not valid TOML: an integer has more than 4300 digits"),
    (WASMTIME.replace(b"streams", b"x = 0x" + b"f" * 5000 + b"\nstreams"),
     "recipes/wasmtime.toml: x: integer of 20000 bits is out of range"),
    (WASMTIME.replace(b"streams", b"x = " + b"[" * 5000 + b"]" * 5000 + b"\nstreams"),
     "recipes/wasmtime.toml: not valid TOML: arrays or inline tables nested too deeply"),
    (WASMTIME.replace(b"streams", b"x = " + b"[" * 40 + b"]" * 40 + b"\nstreams"),
     "recipes/wasmtime.toml: x[0][0][0]"),
    (WASMTIME.replace(b"{arch}", b"{arch:>99999}"),
     "recipes/wasmtime.toml: sources[0].url: placeholder {arch:>99999} in"),
    (WASMTIME.replace(b"{arch}", b"{arch!r}"),
     "recipes/wasmtime.toml: sources[0].url: placeholder {arch!r} in"),
    (WASMTIME.replace(b"{arch}", b"{arch.__class__}"),
     "recipes/wasmtime.toml: sources[0].url: unknown placeholder {arch.__class__}"),
    (WASMTIME + b"x" * (inputs.MAX_BYTES + 1), "recipes/wasmtime.toml: larger than 1024 KiB"),
])
def test_each_attack_on_a_recipe_names_file_and_key(tmp_path: Path, data: bytes, message: str) -> None:
    path = tmp_path / "wasmtime.toml"
    path.write_bytes(data)
    with pytest.raises(BakeryError) as e:
        load_recipe(path, "recipes/wasmtime.toml")
    assert str(e.value).startswith(message), str(e.value)[:300]
    assert len(str(e.value)) < 1000


def test_a_long_version_in_the_lock_is_named_briefly(tmp_path: Path) -> None:
    path = tmp_path / "lock.toml"
    path.write_bytes(LOCK + b'\n[wasmtime."' + b"1" * 100_000 + b'"]\n')
    pins, refused = lock.load_checked(path, "release/lock.toml")
    errors = [r.error for r in refused]
    assert [str(e).split(": ")[:2] for e in errors] == [
        ["release/lock.toml", "wasmtime." + "1" * 60 + "…(100000 characters)"]]
    assert [p.version for p in pins["wasmtime"]] == ["29.0.1"]   # the other pins stay
    assert {"docker", "containerd"} <= set(pins)
    assert len(str(errors[0])) < 1000


def test_a_broken_recipe_hides_no_other(tmp_path: Path) -> None:
    for name, data in RECIPES.items():
        (tmp_path / name).write_bytes(data)
        extra = REPO / "recipes" / name.removesuffix(".toml")   # files/, a signature key
        if extra.is_dir():
            shutil.copytree(extra, tmp_path / extra.name)
    (tmp_path / "bad.toml").write_bytes(b"x = " + b"[" * 5000)
    (tmp_path / "worse.toml").write_bytes(b"\xff" * 10)
    recipes, errors = load_recipes(tmp_path)
    assert sorted(recipes) == sorted(n.removesuffix(".toml") for n in RECIPES)
    assert sorted(str(e).split(":")[0] for e in errors) == [f"{tmp_path.name}/bad.toml",
                                                          f"{tmp_path.name}/worse.toml"]


@pytest.mark.parametrize("data, message", [
    (RELEASE.replace(b"instances_max = 3", b"instances_max = 0x" + b"f" * 300),
     "release/release.toml: instances_max: integer of 1200 bits is out of range"),
    (RELEASE.replace(b'"metadata"', b"[" * 40 + b"]" * 40), "release/release.toml: github.metadata_tag[0]"),
    (RELEASE.replace(b'"metadata"', b"1"), "release/release.toml: github.metadata_tag: must be a release tag name"),
    (RELEASE + b"\xfe", f"release/release.toml: line {RELEASE.count(NL) + 1}: not valid UTF-8"),
])
def test_release_config_attacks_name_the_key(data: bytes, message: str) -> None:
    with pytest.raises(BakeryError) as e:
        sysupdate.parse_config(data, "release/release.toml")
    assert str(e.value).startswith(message), str(e.value)[:300]


@pytest.mark.parametrize("data, message", [
    (b'{"kind": "profile-manifest-v0", "value": ' + b"[" * 5000 + b"]" * 5000 + b"}",
     "the torcx profile is not valid JSON: nested too deeply"),
    (b'{"kind": "profile-manifest-v0", "value": []}', "value.images: missing or not a list"),
    (PROFILE.replace(b"com.coreos.cl", b"../../etc"), "value.images[0].reference: '../../etc' is not"),
    (PROFILE.replace(b"docker", b"dock\\u0000er"), "value.images[0].name: 'dock\\x00er' is not"),
    (PROFILE.replace(b"docker", b"\xff"), f"line {PROFILE[:PROFILE.index(b'docker')].count(NL) + 1}: not valid UTF-8"),
])
def test_torcx_profile_attacks_name_the_key(tmp_path: Path, data: bytes, message: str) -> None:
    path = tmp_path / "vendor.json"
    path.write_bytes(data)
    with pytest.raises(BakeryError) as e:
        load_profile(path)
    assert str(e.value).startswith(f"{path}: {message}"), str(e.value)[:300]


@pytest.mark.parametrize("value, shown", [
    ("x" * 100, "'" + "x" * 80 + "'… (100 characters)"),
    (1 << 70, "<integer of 71 bits>"),
    ([[[[[1]]]]], "[[[[...]]]]"),
    (12, "12"),
])
def test_brief_shows_any_value_in_a_line(value: object, shown: str) -> None:
    assert inputs.brief(value) == shown


def test_inputs_and_network_answers_share_one_nesting_rule_with_their_own_limits(
        tmp_path: Path) -> None:
    """A level is an array or table (the document itself is level 1): inputs allow 32,
    network answers (model/reply.parse_json) 64, both counted by model/nesting."""
    from sysext_bakery.model.reply import parse_json
    inputs.parse_toml("x = " + "[" * 31 + "]" * 31, "t.toml")              # 32 levels
    with pytest.raises(BakeryError) as e:
        inputs.parse_toml("x = " + "[" * 32 + "]" * 32, "t.toml")
    assert str(e.value).startswith("t.toml: x" + "[0]" * 31 + ": nested more than 32 levels deep")
    path = tmp_path / "p.json"
    path.write_text("[" * 32 + "]" * 32)
    inputs.read_json(path, "p.json")
    path.write_text('{"a": ' + "[" * 32 + "]" * 32 + "}")
    with pytest.raises(BakeryError, match=r"^p.json: a(\[0\]){31}: nested more than 32"):
        inputs.read_json(path, "p.json")
    path.write_text('{"a": [1, %d]}' % (1 << 63))                           # JSON too: 64-bit
    with pytest.raises(BakeryError, match=r"^p.json: a\[1\]: integer of 64 bits is out of range"):
        inputs.read_json(path, "p.json")
    assert parse_json("[" * 64 + "]" * 64, "u", "h") and parse_json(str(1 << 63), "u", "h")
    with pytest.raises(BakeryError, match="^u: not valid JSON: nested too deeply"):
        parse_json('{"a": ' + "[" * 64 + "]" * 64 + "}", "u", "h")


def test_a_small_file_under_a_large_limit_is_read_without_reserving_the_limit(tmp_path):
    path = tmp_path / "index.json"
    path.write_bytes(b"{}" * 1000)
    tracemalloc.start()
    try:
        data = inputs.read_bounded(path, str(path), limit=64 << 20)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert data == b"{}" * 1000
    assert peak < 1 << 20, f"reading 2 kB peaked at {peak >> 20} MiB"


@pytest.mark.parametrize("size, refused", [(100, False), (101, True)])
def test_the_limit_holds_for_files_without_a_size(size, refused):
    """A pipe (st_size 0) is read up to the limit all the same."""
    import os
    import threading
    r, w = os.pipe()
    threading.Thread(target=lambda: (os.write(w, b"x" * size), os.close(w)), daemon=True).start()
    try:
        if refused:
            with pytest.raises(BakeryError, match="larger than"):
                inputs.read_bounded(Path(f"/proc/self/fd/{r}"), "the pipe", limit=100)
        else:
            assert inputs.read_bounded(Path(f"/proc/self/fd/{r}"), "the pipe", limit=100) == b"x" * 100
    finally:
        os.close(r)
