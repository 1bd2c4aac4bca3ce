"""The real doit and bakery CLIs at their edges (issue 13, guarantees 3 and 8): a broken recipe
next to good ones, a closed stdout, a corrupted image, bad settings: never a traceback, each
problem said once."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, Project
from sysext_bakery.build import inspect
from sysext_bakery.build.pack import pack
from sysext_bakery.errors import BakeryError
from sysext_bakery.output import EXIT_CLOSED_PIPE, doit_command
from test_readback import tree  # noqa: F401  (fixture)

BAD_RECIPES = {
    "utf8.toml": b'description = "\xff\xfe"\n',
    "deep.toml": b"x = " + b"[" * 5000 + b"]" * 5000 + b"\n",
    "digits.toml": b"x = " + b"9" * 5000 + b"\n",
    "spec.toml": (REPO / "recipes/wasmtime.toml").read_bytes().replace(b"{arch}", b"{arch:>99999}"),
    "conv.toml": (REPO / "recipes/wasmtime.toml").read_bytes().replace(b"{arch}", b"{arch!r}"),
}


def test_doit_list_shows_the_good_recipes_and_names_each_bad_one(project: Project) -> None:
    for name, data in BAD_RECIPES.items():
        (project.root / "recipes" / name).write_bytes(data)
    proc = project.doit("list")
    assert "Traceback" not in proc.stderr
    for good in ("build:docker-24.0.9", "build:containerd-1.7.27", "build:wasmtime-29.0.1"):
        assert good in proc.stdout
    for name in BAD_RECIPES:
        assert proc.stderr.count(f"bakery: problem: recipes/{name}: ") == 1, proc.stderr


def test_a_bad_lock_entry_hides_only_itself(project: Project) -> None:
    with project.lock_path.open("a") as f:
        f.write('\n[wasmtime."' + "1" * 100_000 + '"]\n')
    proc = project.doit("list")
    assert "Traceback" not in proc.stderr and len(proc.stderr) < 2000
    assert "bakery: problem: release/lock.toml: wasmtime.111" in proc.stderr
    assert "build:docker-24.0.9" in proc.stdout and "build:wasmtime-29.0.1" in proc.stdout


def _closed_pipe(argv: list[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run with stdout a pipe whose reader has already gone (`cmd | true`): every write fails."""
    read, write = os.pipe()
    os.close(read)
    try:
        proc = subprocess.run(argv, cwd=cwd, stdout=write, stderr=subprocess.PIPE, text=True,
                              env={**os.environ, **(env or {})}, timeout=120)
    finally:
        os.close(write)
    return proc


def test_doit_list_into_a_closed_pipe_ends_like_a_unix_tool(project: Project) -> None:
    proc = _closed_pipe([sys.executable, "-m", "doit", "list", "--all"], project.root,
                        {"BAKERY_MIRROR": project.mirror.url})
    assert proc.stderr == ""                      # no traceback, no "Exception ignored"
    assert proc.returncode == -signal.SIGPIPE     # the shell shows 141, like `yes | head -1`


@pytest.fixture
def big_image(tree: Path, tmp_path: Path) -> Path:  # noqa: F811
    for i in range(400):   # a listing larger than stdout's buffer: print itself fails
        (tree / f"usr/share/f{i:04}").write_text(str(i))
    out = tmp_path / "tool-2.0-x86-64.raw"
    pack(tree, out, "squashfs", "zstd")
    return out


def test_bakery_inspect_into_a_closed_pipe_exits_141(big_image: Path) -> None:
    proc = _closed_pipe([sys.executable, "-m", "sysext_bakery.cli", "inspect", str(big_image)], REPO)
    assert proc.stderr == ""
    assert proc.returncode == EXIT_CLOSED_PIPE == 141


@pytest.mark.parametrize("listing", ["big", "small"])
def test_doit_inspect_into_a_closed_pipe_exits_141(project: Project, big_image: Path,
                                                   tmp_path: Path, listing: str) -> None:
    image = big_image
    if listing == "small":   # the report fits doit's buffer: the final flush is what fails
        image = tmp_path / "small-1-x86-64.raw"
        (tmp_path / "small/usr/lib/extension-release.d").mkdir(parents=True)
        (tmp_path / "small/usr/lib/extension-release.d/extension-release.small").write_text("ID=_any\n")
        pack(tmp_path / "small", image)
    proc = _closed_pipe([sys.executable, "-m", "doit", "inspect", str(image)], project.root)
    assert "Traceback" not in proc.stderr and "Exception ignored" not in proc.stderr, proc.stderr
    assert proc.returncode == EXIT_CLOSED_PIPE


def test_a_corrupted_image_is_named_never_a_decoder_error(tmp_path: Path) -> None:
    small = tmp_path / "small"
    (small / "usr/lib/extension-release.d").mkdir(parents=True)
    (small / "usr/lib/extension-release.d/extension-release.tool").write_text("ID=_any\n" * 40)
    (small / "usr/bin").mkdir()
    (small / "usr/bin/tool").write_bytes(bytes(range(256)) * 8)
    (small / "usr/bin/link").symlink_to("tool")
    image = tmp_path / "tool-2.0-x86-64.raw"
    pack(small, image, "squashfs", "zstd")
    data = image.read_bytes()
    corrupt = tmp_path / "corrupt.raw"
    seen = set()
    # every 6th byte past the superblock, flipped, then truncations: zstd frames, inode and
    # directory tables, the fragment table and the id table all get hit
    variants = [data[:i] + bytes([data[i] ^ 0x5A]) + data[i + 1:] for i in range(96, len(data), 6)]
    variants += [data[:n] for n in range(0, len(data), max(len(data) // 40, 1))]
    for variant in variants:
        corrupt.write_bytes(variant)
        try:
            inspect.format_image(corrupt)
        except BakeryError as e:
            assert str(e).startswith(f"{corrupt}: "), e
            seen.add(str(e).split(": ")[2] if "cannot read the" in str(e) else "other")
    assert any("ZstdError" in s for s in seen), seen   # the case issue 13 found

    for i in range(96, len(data), 6):   # and through the CLI, the first variant zstd rejects
        corrupt.write_bytes(data[:i] + bytes([data[i] ^ 0x5A]) + data[i + 1:])
        try:
            inspect.format_image(corrupt)
        except BakeryError as e:
            if "ZstdError" in str(e):
                break
    proc = subprocess.run([sys.executable, "-m", "sysext_bakery.cli", "inspect", str(corrupt)],
                          capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith(f"bakery: error: {corrupt}: cannot read the squashfs image: ZstdError")
    assert "hint: the file is truncated or corrupt; rebuild it" in proc.stderr


_ARCH = ({"BAKERY_ARCH": "sparc"}, "bakery: error: BAKERY_ARCH: unknown arch 'sparc'")
_COMMANDS = [["build:wasmtime"], ["build"], ["release", "--dest", "out"],
             ["fetch:wasmtime-29.0.1-x86-64"], ["inspect", "x.raw"], ["overlaps"], ["update:wasmtime", "--commit"], ["plan"],
             ["list"]]


@pytest.mark.parametrize("env, said, command", [
    *((*_ARCH, c) for c in _COMMANDS),
    ({"BAKERY_CACHE": "/proc/nope"}, "bakery: error: BAKERY_CACHE=/proc/nope: not a directory "
     "the bakery can write to: No such file or directory", ["build:wasmtime"]),
    ({"BAKERY_CACHE": "/etc/passwd"}, "bakery: error: BAKERY_CACHE=/etc/passwd: is not a directory",
     ["list"]),
])
def test_bad_settings_are_reported_once(project: Project, env: dict[str, str], said: str,
                                        command: list[str]) -> None:
    proc = project.doit(*command, env=env, check=False)
    out = proc.stdout + proc.stderr
    assert out.count(said) == 1, out
    assert "Invalid parameter" not in out and "Traceback" not in out
    assert proc.returncode == (0 if command == ["list"] else 1), out
    if command != ["list"]:
        assert "not run: the configuration is broken (bakery: error above)" in out
    assert not (project.root / "out").exists()


def test_doit_command_is_found_as_doit_finds_it() -> None:
    assert doit_command(["list", "--all"]) == "list"
    assert doit_command(["-f", "list", "-d", "x", "X=1", "info", "build"]) == "info"
    assert doit_command(["--dir=x", "build:docker"]) == "build:docker"
    assert doit_command([]) is None   # doit runs its default tasks
