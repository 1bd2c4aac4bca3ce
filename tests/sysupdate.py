"""Helpers for the release tests: the real systemd-sysupdate, a loopback web server for a
published directory, test images with their provenance files, and a throwaway gpg key."""
from __future__ import annotations

import contextlib
import functools
import http.server
import json
import os
import platform
import shutil
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

# where scripts/install-sysupdate unpacks the bookworm-backports packages on Debian 12
PRIVATE_DIR = Path(os.environ.get("BAKERY_SYSUPDATE_DIR", "/opt/bakery-sysupdate"))


@dataclass(frozen=True)
class Sysupdate:
    binary: Path
    env: dict[str, str]

    def run(self, definitions: Path, root: Path, *args: str,
            keyring: Path | None = None) -> subprocess.CompletedProcess:
        """`systemd-sysupdate --definitions=D ARGS` as on a host whose /etc and /opt are
        root/etc and root/opt: inside a private mount namespace, each is an overlay with the
        host's directory below and the test root's directory as the writable layer, so the
        host is never changed. (Not --root: with --root, sysupdate resolves an existing
        CurrentSymlink and overwrites the old image with a symlink.) With `keyring`, it is
        the host's /etc/systemd/import-pubring.gpg (for Verify=yes)."""
        script = ["set -e"]
        for top in ("etc", "opt"):
            (root / top).mkdir(parents=True, exist_ok=True)
            work = root / f".overlay-work-{top}"
            work.mkdir(exist_ok=True)
            script.append(f'mount -t overlay overlay -o "lowerdir=/{top},upperdir={root / top},'
                          f'workdir={work}" /{top}')
        if keyring is not None:
            (root / "etc/systemd").mkdir(parents=True, exist_ok=True)
            shutil.copyfile(keyring, root / "etc/systemd/import-pubring.gpg")
        script.append('exec "$@"')
        cmd = ["unshare", "-m", "--propagation", "private", "sh", "-c", "\n".join(script), "sh",
               str(self.binary), f"--definitions={definitions}", *args]
        return subprocess.run(cmd, env={**os.environ, **self.env}, capture_output=True,
                              text=True, timeout=120)


@functools.cache
def find_sysupdate() -> Sysupdate | None:
    """The binary the way scripts/install-sysupdate provides it: installed, else unpacked."""
    for d in (Path("/usr/lib/systemd"), Path("/lib/systemd")):
        if (d / "systemd-sysupdate").is_file() and (d / "systemd-pull").is_file():
            return Sysupdate(d / "systemd-sysupdate", {})
    binary = PRIVATE_DIR / "lib/systemd/systemd-sysupdate"
    if not binary.is_file():
        return None
    multiarch = f"{platform.machine()}-linux-gnu"
    return Sysupdate(binary, {
        "LD_LIBRARY_PATH": str(PRIVATE_DIR / "usr/lib" / multiarch / "systemd"),
        "SYSTEMD_PULL_PATH": str(PRIVATE_DIR / "lib/systemd/systemd-pull"),
    })


@pytest.fixture
def sysupdate() -> Sysupdate:
    found = find_sysupdate()
    if found is None:
        pytest.skip("systemd-sysupdate not found: run scripts/install-sysupdate (CI does)")
    if os.geteuid() != 0:
        pytest.skip("sysupdate runs in a private mount namespace with /etc and /opt overlaid: "
                    "needs root")
    return found


@contextlib.contextmanager
def serve(directory: Path) -> Iterator[str]:
    """Serve `directory` read-only on 127.0.0.1; yields the base URL ending in '/'."""
    handler = functools.partial(_QuietHandler, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


def make_image(workdir: Path, name: str, version: str, *, stream: str | None = None,
               arch: str = "x86-64") -> tuple[Path, Path]:
    """Pack a tiny real sysext (usr/bin/<name> printing its version) into
    workdir/images/<img>.raw and write its provenance to workdir/state/images/<img>.json,
    as the pack step does. Returns (images dir, state dir)."""
    from sysext_bakery.build.pack import pack

    img = f"{name}-{version}-{arch}"
    tree = workdir / "trees" / img
    (tree / "usr/bin").mkdir(parents=True)
    tool = tree / "usr/bin" / name
    tool.write_text(f"#!/bin/sh\necho {name} {version}\n")
    tool.chmod(0o755)
    release_dir = tree / "usr/lib/extension-release.d"
    release_dir.mkdir(parents=True)
    (release_dir / f"extension-release.{name}").write_text(
        f"ID=_any\nARCHITECTURE={arch}\nSYSEXT_VERSION_ID={version}\n")
    images, state = workdir / "images", workdir / "state"
    images.mkdir(exist_ok=True)
    (state / "images").mkdir(parents=True, exist_ok=True)
    raw = images / f"{img}.raw"
    sha256 = pack(tree, raw, fmt="squashfs", compression="zstd")
    write_provenance(state, name, version, arch, sha256, raw.stat().st_size, stream)
    return images, state


def write_provenance(state: Path, name: str, version: str, arch: str, sha256: str, size: int,
                     stream: str | None = None, **facts: str) -> Path:
    """The provenance file the pack step writes; `facts` adds e.g. revision= and built=."""
    path = state / "images" / f"{name}-{version}-{arch}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({
        "name": name, "version": version, "arch": arch, "stream": stream,
        "sha256": sha256, "size": size,
        "sources": [{"url": f"https://example.invalid/{name}-{version}.tar.gz",
                     "sha256": "ab" * 32}],
        **facts,
    }))
    return path


@dataclass(frozen=True)
class GpgKey:
    gnupghome: Path
    fingerprint: str
    armored_secret: str
    public: bytes      # binary export: usable as /etc/systemd/import-pubring.gpg


def make_gpg_key(directory: Path, passphrase: str = "") -> GpgKey:
    """A fresh ed25519 signing key (passphrase-less by default) in directory/gnupg."""
    home = directory / "gnupg"
    home.mkdir(mode=0o700)
    env = {**os.environ, "GNUPGHOME": str(home)}

    def gpg(*args: str) -> str:
        return subprocess.run(["gpg", "--batch", "--quiet", *args], env=env, check=True,
                              capture_output=True, text=True).stdout

    unlock = ("--pinentry-mode", "loopback", "--passphrase", passphrase)
    gpg(*unlock, "--quick-gen-key", "Bakery Test <bakery@example.invalid>",
        "ed25519", "sign", "never")
    fingerprint = next(line.split(":")[9] for line in
                       gpg("--list-secret-keys", "--with-colons").splitlines()
                       if line.startswith("fpr:"))
    public = subprocess.run(["gpg", "--batch", "--export", fingerprint], env=env, check=True,
                            capture_output=True).stdout
    return GpgKey(home, fingerprint, gpg(*unlock, "--armor", "--export-secret-keys", fingerprint),
                  public)


@pytest.fixture
def gpg_key(tmp_path: Path) -> Iterator[GpgKey]:
    """A make_gpg_key key in tmp_path, its gpg-agent stopped afterwards."""
    key = make_gpg_key(tmp_path)
    yield key
    stop_gpg_agent(key.gnupghome)


@pytest.fixture
def new_gpg_key(tmp_path: Path) -> Iterator[GpgKey]:
    """A second key, the one a key rotation moves to."""
    (tmp_path / "new-key").mkdir()
    key = make_gpg_key(tmp_path / "new-key")
    yield key
    stop_gpg_agent(key.gnupghome)


def stop_gpg_agent(home: Path) -> None:
    """Stop the agent gpg started for `home`: it is a daemon that outlives the test."""
    subprocess.run(["gpgconf", "--kill", "gpg-agent"], capture_output=True,
                   env={**os.environ, "GNUPGHOME": str(home)})


def gpg_agents(homedir_part: str) -> list[int]:
    """Pids of running gpg-agents whose --homedir contains `homedir_part`."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            args = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:   # not a pid, or it just exited
            continue
        if args and Path(args[0].decode(errors="replace")).name == "gpg-agent" and any(
                homedir_part.encode() in a for a in args[1:]):
            found.append(int(proc.name))
    return found
