"""Signing SHA256SUMS with gpg: the key from the environment, detached signatures, and the
check that a signature verifies against exactly the published public key."""
from __future__ import annotations

import contextlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Mapping

from sysext_bakery import run
from sysext_bakery.errors import BakeryError

GPG_TIMEOUT = 120.0   # seconds; a gpg waiting for a pinentry that never comes must not hang a release


@dataclass(frozen=True)
class Signer:
    """A gpg key that signs SHA256SUMS; `gnupghome` None means the user's own keyring."""
    key: str                      # key id or fingerprint
    gnupghome: Path | None = None
    passphrase: str | None = None



@contextlib.contextmanager
def signer_from_env(env: Mapping[str, str] = os.environ) -> Iterator[Signer | None]:
    """BAKERY_SIGNING_KEY (an armored exported secret key, imported into a temporary
    GNUPGHOME) or BAKERY_SIGNING_KEY_ID (a key in the user's keyring); None if neither.
    BAKERY_SIGNING_PASSPHRASE unlocks a protected key."""
    passphrase = env.get("BAKERY_SIGNING_PASSPHRASE")
    if env.get("BAKERY_SIGNING_KEY"):
        with tempfile.TemporaryDirectory(prefix="bakery-gnupg-") as home:
            os.chmod(home, 0o700)
            _gpg(Signer("", Path(home)), "--import", data=env["BAKERY_SIGNING_KEY"].encode(),
                 what="importing BAKERY_SIGNING_KEY")
            listing = _gpg(Signer("", Path(home)), "--list-secret-keys", "--with-colons",
                           what="listing the imported key").decode()
            fingerprints = [line.split(":")[9] for line in listing.splitlines()
                            if line.startswith("fpr:")]
            if not fingerprints:
                raise BakeryError("BAKERY_SIGNING_KEY holds no secret key",
                                  "export it with: gpg --armor --export-secret-keys KEYID")
            try:
                yield Signer(fingerprints[0], Path(home), passphrase)
            finally:
                # signing started a gpg-agent for this home; it would outlive the directory
                run.run(["gpgconf", "--kill", "gpg-agent"], what="stopping the signing gpg-agent",
                        env=run.environ(GNUPGHOME=home), check=False, timeout=30)
    elif env.get("BAKERY_SIGNING_KEY_ID"):
        yield Signer(env["BAKERY_SIGNING_KEY_ID"], None, passphrase)
    else:
        yield None


def _gpg(signer: Signer, *args: str, data: bytes = b"", what: str) -> bytes:
    env = dict(os.environ)
    if signer.gnupghome:
        env["GNUPGHOME"] = str(signer.gnupghome)
    cmd = ["gpg", "--batch", "--no-tty", "--quiet"]
    if signer.passphrase is not None:
        # the passphrase goes first on stdin, the data follows
        cmd += ["--pinentry-mode", "loopback", "--passphrase-fd", "0"]
        data = signer.passphrase.encode() + b"\n" + data
    done = run.run([*cmd, *args], input=data, env=env, what=f"gpg: {what}", check=False,
                   timeout=GPG_TIMEOUT)
    if done.returncode != 0:
        raise BakeryError(f"gpg failed {what}: {done.stderr.decode(errors='replace').strip()}",
                          "check BAKERY_SIGNING_KEY / BAKERY_SIGNING_KEY_ID and the passphrase")
    return done.stdout


def export_public_key(signer: Signer) -> bytes:
    key = _gpg(signer, "--export", signer.key, what=f"exporting public key {signer.key}")
    if not key:
        raise BakeryError(f"gpg knows no key {signer.key!r}",
                          "set BAKERY_SIGNING_KEY_ID to a key listed by: gpg --list-secret-keys")
    return key


def sign(signer: Signer, data: bytes) -> bytes:
    return _gpg(signer, "--local-user", signer.key, "--detach-sign", "--output", "-",
                data=data, what=f"signing with key {signer.key}")


def signature_valid(signer: Signer, data: bytes, signature: bytes, public_key: bytes) -> bool:
    """Whether `signature` is a good signature of `data` by exactly the published key."""
    with tempfile.TemporaryDirectory(prefix="bakery-verify-") as tmp:
        keyring, sig = Path(tmp, "key.gpg"), Path(tmp, "data.sig")
        keyring.write_bytes(public_key)
        sig.write_bytes(signature)
        done = run.run(
            ["gpg", "--batch", "--no-tty", "--quiet", "--no-default-keyring",
             "--keyring", str(keyring), "--trust-model", "always", "--verify", str(sig), "-"],
            input=data, env=run.environ(GNUPGHOME=tmp), what="gpg: verifying the signature",
            check=False, timeout=GPG_TIMEOUT)
        return done.returncode == 0


# ---- files -------------------------------------------------------------------------------
