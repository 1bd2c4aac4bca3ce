"""Checking detached gpg signatures against one given public key, in a throw-away GNUPGHOME.

Shared by publishing (does the published SHA256SUMS.gpg verify with our key?) and fetching
(is upstream's sums file signed by the key shipped in the recipe's directory?). The user's own
keyring is never consulted: trust comes from exactly the key passed in.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

from sysext_bakery import run

GPG_TIMEOUT = 120.0   # seconds; a gpg waiting for a pinentry that never comes must not hang a build
_BATCH = ("gpg", "--batch", "--no-tty", "--quiet")


def primary_fingerprints(colons: str, kind: str) -> list[str]:
    """The fingerprints of the primary keys (`sec` or `pub` records) in gpg --with-colons
    output; a subkey's `fpr` line follows its `ssb`/`sub` record and is skipped."""
    found, after = [], ""
    for line in colons.splitlines():
        fields = line.split(":")
        if fields[0] == "fpr" and after == kind and len(fields) > 9:
            found.append(fields[9].upper())
        after = fields[0] if fields[0] != "fpr" else ""
    return found


def key_fingerprints(public_key: bytes) -> tuple[str, ...]:
    """The primary keys in an armored or binary public key file; () if it holds none."""
    with tempfile.TemporaryDirectory(prefix="bakery-show-") as tmp:
        done = run.run([*_BATCH, "--with-colons", "--show-keys"], input=public_key,
                       env=run.environ(GNUPGHOME=tmp), check=False,
                       what="gpg: reading a public key", timeout=GPG_TIMEOUT)
    return tuple(primary_fingerprints(done.stdout.decode(errors="replace"), "pub"))


def verify_detached(data: bytes, signature: bytes, public_key: bytes) -> bool:
    """Whether `signature` (armored or binary, detached) is good for `data` by the keys in
    `public_key` (armored or binary). gpg, like systemd-pull, fails when any signature in the
    file is by a key it lacks, so a second signature by a stranger is a failure too."""
    with tempfile.TemporaryDirectory(prefix="bakery-verify-") as tmp:
        os.chmod(tmp, 0o700)
        env = run.environ(GNUPGHOME=tmp)
        # imported rather than passed as --keyring: gpg 2.2 reads no armored keyring files
        imported = run.run([*_BATCH, "--import"], input=public_key, env=env, check=False,
                           what="gpg: importing the verifying key", timeout=GPG_TIMEOUT)
        if imported.returncode != 0:
            return False
        sig = Path(tmp, "data.sig")
        sig.write_bytes(signature)
        done = run.run([*_BATCH, "--trust-model", "always", "--status-fd", "1",
                        "--verify", str(sig), "-"],
                       input=data, env=env, what="gpg: verifying a signature",
                       check=False, timeout=GPG_TIMEOUT)
        status = done.stdout.decode(errors="replace").splitlines()
        # exit 0 alone would also pass a file holding no signature packet at all
        return done.returncode == 0 and any(line.startswith("[GNUPG:] VALIDSIG ")
                                            for line in status)
