"""Guarantee 9 of issue 13 (docs/security.md): GITHUB_TOKEN, the signing key (BAKERY_SIGNING_KEY)
and its passphrase never appear in logs, errors, index.json or any other file a full run
writes: a build and a signed release to a directory and to GitHub (the loopback REST server
of test_github) with distinctive secrets, then two runs that fail on a wrong token and a
wrong passphrase, and every output searched for every secret. Every program those runs start
(mksquashfs, gpg, git, ...) is a wrapper on PATH that records its environment first: no child
may see a secret variable or value either."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import tomli_w

from sysext_bakery.run import PACKAGES
from sysext_bakery.settings import SECRETS

from sysupdate import make_gpg_key, stop_gpg_agent
from test_github import TOKEN, assets_of, github  # noqa: F401  (github: the fixture)

PASSPHRASE = "pp-Zq7-distinctive-passphrase-4711"
WRONG_PASSPHRASE = "pp-wrong-distinctive-passphrase-0815"
WRONG_TOKEN = "ghp_wrong_distinctive_token_value_999"


def key_material(armored: str) -> list[bytes]:
    """Every line of the armored secret key's body: any one of them in an output is a leak."""
    return [line.encode() for line in armored.splitlines()
            if len(line) >= 20 and not line.startswith("-----")]


def everything_written(*roots: Path) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for root in roots for p in root.rglob("*")
            if p.is_file() and not p.is_symlink()}


def recording_wrappers(bin_dir: Path, dumps: Path) -> list[str]:
    """A script in `bin_dir` for every tool the bakery runs that is installed: it writes its
    environment to `dumps`/<tool>.<pid>, then execs the real tool."""
    bin_dir.mkdir()
    dumps.mkdir()
    wrapped = []
    for tool in sorted(PACKAGES):
        real = shutil.which(tool)
        if real is None:
            continue
        script = bin_dir / tool
        script.write_text(f'#!/bin/sh\nenv > "{dumps}/{tool}.$$"\nexec "{real}" "$@"\n')
        script.chmod(0o755)
        wrapped.append(tool)
    return wrapped


def test_no_secret_reaches_any_output(project, tmp_path, github):
    gh, api = github
    key = make_gpg_key(tmp_path, passphrase=PASSPHRASE)
    try:
        (project.root / "release/release.toml").write_text(tomli_w.dumps({
            "base_url": "https://example.invalid/sysext/", "instances_max": 3,
            "signing": {"fingerprint": key.fingerprint},
            "github": {"repo": "owner/bakery", "metadata_tag": "metadata"}}))
        dumps = tmp_path / "environs"
        assert {"mksquashfs", "gpg", "git"} <= set(recording_wrappers(tmp_path / "bin", dumps))
        env = {"BAKERY_ARCH": "x86-64", "GITHUB_TOKEN": TOKEN, "GITHUB_API_URL": api,
               "BAKERY_SIGNING_KEY": key.armored_secret, "BAKERY_SIGNING_PASSPHRASE": PASSPHRASE,
               "PATH": f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}"}
        dest = tmp_path / "pub"
        runs = [project.doit("build:wasmtime", env=env),
                project.doit("release", "--dest", str(dest), "--github", env=env)]
        assert (dest / "SHA256SUMS.gpg").is_file() and "SHA256SUMS.gpg" in assets_of(gh, "metadata")
        # a new directory, so it must sign; the published one needs no new signature
        wrong_pass = project.doit("release", "--dest", str(tmp_path / "pub2"), check=False,
                                  env={**env, "BAKERY_SIGNING_PASSPHRASE": WRONG_PASSPHRASE})
        wrong_token = project.doit("release", "--dest", str(dest), "--github", check=False,
                                   env={**env, "GITHUB_TOKEN": WRONG_TOKEN})
    finally:
        stop_gpg_agent(key.gnupghome)
    assert wrong_pass.returncode != 0 and "gpg failed" in wrong_pass.stdout + wrong_pass.stderr
    assert wrong_token.returncode != 0 and "401" in wrong_token.stdout + wrong_token.stderr

    outputs = {f"doit run {i} {stream}": getattr(proc, stream).encode()
               for i, proc in enumerate([*runs, wrong_pass, wrong_token])
               for stream in ("stdout", "stderr")}
    outputs |= everything_written(project.root / "build", dest, tmp_path / "pub2")
    outputs |= {f"GitHub asset {a['name']}": a["data"] for a in gh.assets.values()}
    assert any(name.endswith("index.json") for name in outputs)
    secrets = [TOKEN.encode(), WRONG_TOKEN.encode(), PASSPHRASE.encode(),
               WRONG_PASSPHRASE.encode(), *key_material(key.armored_secret)]
    assert len(secrets) > 6
    leaks = [(where, secret[:12]) for where, data in outputs.items() for secret in secrets
             if secret in data]
    assert leaks == []

    children = {p.name: p.read_bytes() for p in dumps.iterdir()}
    assert {"mksquashfs", "gpg", "gpgconf", "git"} <= {n.split(".")[0] for n in children}
    seen = [(child, secret[:12]) for child, data in children.items() for secret in secrets
            if secret in data]
    named = [(child, line.split(b"=")[0]) for child, data in children.items()
             for line in data.splitlines() if line.split(b"=")[0].decode() in SECRETS]
    assert (seen, named) == ([], [])
