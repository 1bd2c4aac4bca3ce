"""Signing SHA256SUMS with gpg: the key from the environment, detached signatures, and the
check that a signature verifies against exactly the published public key."""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Mapping

from sysext_bakery import gpg, run
from sysext_bakery.errors import BakeryError
from sysext_bakery.gpg import GPG_TIMEOUT, primary_fingerprints

HOME_PREFIX = "bakery-gnupg-"   # + "<pid>-<random>": the pid lets a later run clean up


@dataclass(frozen=True)
class Signer:
    """A gpg key that signs SHA256SUMS; `gnupghome` None means the user's own keyring."""
    key: str                      # primary key fingerprint (40 hex, upper case)
    gnupghome: Path | None = None
    passphrase: str | None = None
    available: tuple[str, ...] = ()   # every secret key's fingerprint there (a rotation has two)


def _set_but_empty(env: Mapping[str, str], name: str) -> None:
    # an Actions secret that was never created reaches the job as "": that must not be
    # taken as "publish unsigned"
    if name in env and not env[name].strip():
        raise BakeryError(f"{name} is set but empty",
                          f"set it to the key (see docs/release.md, 'Signing'), or unset {name} "
                          "for an unsigned release")


def remove_orphaned_homes(tmp: str | None = None) -> list[str]:
    """The temporary GNUPGHOMEs of signing runs that were killed (SIGKILL skips their cleanup)
    hold an imported secret key: remove those whose process is gone, and stop their agents.
    The creator's pid is in the name; a live process's home is never touched."""
    removed = []
    base = Path(tmp or tempfile.gettempdir())
    for home in base.glob(f"{HOME_PREFIX}*-*"):
        pid = home.name[len(HOME_PREFIX):].split("-", 1)[0]
        if not pid.isdigit() or not home.is_dir() or home.is_symlink() or _alive(int(pid)):
            continue
        run.run(["gpgconf", "--kill", "gpg-agent"], what="stopping an orphaned gpg-agent",
                env=run.environ(GNUPGHOME=str(home)), check=False, timeout=30)
        shutil.rmtree(home, ignore_errors=True)
        removed.append(str(home))
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:      # another user's process: alive, and not ours to clean
        return True
    return True


@contextlib.contextmanager
def signer_from_env(env: Mapping[str, str] | None = None) -> Iterator[Signer | None]:
    """BAKERY_SIGNING_KEY (armored exported secret key(s), imported into a temporary
    GNUPGHOME) or BAKERY_SIGNING_KEY_ID (a key in the user's keyring); None if neither.
    BAKERY_SIGNING_PASSPHRASE unlocks a protected key. Set but empty is an error. `env`
    defaults to the process environment."""
    env = run.environment() if env is None else env
    _set_but_empty(env, "BAKERY_SIGNING_KEY")
    _set_but_empty(env, "BAKERY_SIGNING_KEY_ID")
    passphrase = env.get("BAKERY_SIGNING_PASSPHRASE")
    if env.get("BAKERY_SIGNING_KEY"):
        remove_orphaned_homes()
        with tempfile.TemporaryDirectory(prefix=f"{HOME_PREFIX}{os.getpid()}-") as home:
            os.chmod(home, 0o700)
            _gpg(Signer("", Path(home)), "--import", data=env["BAKERY_SIGNING_KEY"].encode(),
                 what="importing BAKERY_SIGNING_KEY")
            listing = _gpg(Signer("", Path(home)), "--list-secret-keys", "--with-colons",
                           what="listing the imported key").decode()
            fingerprints = primary_fingerprints(listing, "sec")
            if not fingerprints:
                raise BakeryError("BAKERY_SIGNING_KEY holds no secret key",
                                  "export it with: gpg --armor --export-secret-keys KEYID")
            try:
                yield Signer(fingerprints[0], Path(home), passphrase, tuple(fingerprints))
            finally:
                # signing started a gpg-agent for this home; it would outlive the directory
                run.run(["gpgconf", "--kill", "gpg-agent"], what="stopping the signing gpg-agent",
                        env=run.environ(GNUPGHOME=home), check=False, timeout=30)
    elif env.get("BAKERY_SIGNING_KEY_ID"):
        wanted = env["BAKERY_SIGNING_KEY_ID"].strip()
        done = run.run(["gpg", "--batch", "--no-tty", "--list-secret-keys", "--with-colons", wanted],
                       what=f"gpg: looking up {wanted}", check=False, timeout=GPG_TIMEOUT)
        fingerprints = primary_fingerprints(done.stdout.decode(errors="replace"), "sec")
        if done.returncode != 0 or len(fingerprints) != 1:
            raise BakeryError(f"BAKERY_SIGNING_KEY_ID {wanted!r}: gpg knows "
                              f"{'no' if not fingerprints else len(fingerprints)} secret key(s) by it",
                              "set it to one fingerprint listed by: gpg --list-secret-keys")
        yield Signer(fingerprints[0], None, passphrase, tuple(fingerprints))
    else:
        yield None


def keyring_fingerprints(keyring: bytes) -> tuple[str, ...]:
    """The primary keys in a binary keyring (a published bakery-signing-key.gpg)."""
    return gpg.key_fingerprints(keyring)


def _gpg(signer: Signer, *args: str, data: bytes = b"", what: str) -> bytes:
    env = run.environ()
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


def export_public_keys(signer: Signer, fingerprints: tuple[str, ...]) -> bytes:
    """A binary keyring holding exactly `fingerprints`, each exported from the signer's gpg."""
    keys = []
    for fingerprint in fingerprints:
        key = _gpg(signer, "--export", fingerprint, what=f"exporting public key {fingerprint}")
        if not key:
            raise BakeryError(
                f"gpg knows no public key {fingerprint}: it belongs in the published keyring",
                "import it where the signing key comes from (BAKERY_SIGNING_KEY may hold several "
                "keys: gpg --armor --export-secret-keys OLD NEW), see docs/release.md")
        keys.append(key)
    return b"".join(keys)


def export_public_key(signer: Signer) -> bytes:
    return export_public_keys(signer, (signer.key,))


def sign(signer: Signer, data: bytes) -> bytes:
    return _gpg(signer, "--local-user", signer.key, "--detach-sign", "--output", "-",
                data=data, what=f"signing with key {signer.key}")


def signature_valid(data: bytes, signature: bytes, public_key: bytes) -> bool:
    """Whether `signature` is good for `data` by the keys in `public_key`."""
    return gpg.verify_detached(data, signature, public_key)
