"""Which key may sign a release and which keys its published keyring holds: the rules of
signing continuity, on plain values (fingerprints), so they read in one place.

Hosts check SHA256SUMS.gpg against /etc/systemd/import-pubring.gpg, which provisioning
installs once. A release signed by a key the host lacks is refused and the host stops
updating; so the key named in release/release.toml (`[signing] fingerprint`) is the only
one that signs, unless a rotation is under way (docs/release.md, 'Rotating the signing key').
Checked with the real gpg and systemd-pull: a signature file holding two signatures fails
(`gpg --verify` exits 2) on a host that lacks either key, so a rotation never double-signs;
it ships a keyring with both keys first and switches the signing key afterwards.
"""
from __future__ import annotations

from dataclasses import dataclass

from sysext_bakery.errors import BakeryError

ROTATION_DOCS = "docs/release.md, 'Rotating the signing key'"


@dataclass(frozen=True)
class KeyPlan:
    """What a publish run does about signing: `signer` (None: unsigned) and the fingerprints
    of the published keyring (bakery-signing-key.gpg): the configured key, then the next."""
    signer: str | None
    keyring: tuple[str, ...] = ()


def choose_key(available: tuple[str, ...], configured: str | None, next_key: str | None,
               rotate_key: bool) -> str:
    """The secret key to sign with when the signing environment holds several: the next key
    for `--rotate-key`, else the configured one, else the first (then refused by `plan`)."""
    for wanted in ((next_key,) if rotate_key else ()) + (configured,):
        if wanted in available:
            return wanted
    return available[0]


def plan(configured: str | None, next_key: str | None, signer: str | None,
         published: tuple[str, ...], signed_before: bool, dest: str,
         allow_unsigned: bool = False, rotate_key: bool = False) -> KeyPlan:
    """`configured`/`next_key`: release.toml's `[signing] fingerprint` and `next`; `signer`:
    the key BAKERY_SIGNING_KEY(_ID) provides; `published`: the keys in `dest`'s current
    bakery-signing-key.gpg; `signed_before`: `dest` holds a signature or key."""
    if signer is None:
        if allow_unsigned:
            return KeyPlan(None)
        if configured:
            raise BakeryError(
                f"release/release.toml names the signing key {configured} but no signing key "
                "is configured: the release would be unsigned and hosts with Verify=yes would "
                "stop updating",
                "set BAKERY_SIGNING_KEY or BAKERY_SIGNING_KEY_ID to that key (see docs/release.md), "
                "or pass --allow-unsigned to publish unsigned on purpose")
        if signed_before:
            raise BakeryError(
                f"{dest} holds a signed release but no signing key is configured: publishing "
                "would turn it into an unsigned one",
                "set BAKERY_SIGNING_KEY or BAKERY_SIGNING_KEY_ID (see docs/release.md), or pass "
                "--allow-unsigned (allow_unsigned=True) to downgrade to an unsigned release on purpose")
        return KeyPlan(None)
    if configured is None:
        raise BakeryError(
            f"a signing key ({signer}) is configured but release/release.toml names none",
            f'add to release/release.toml:\n[signing]\nfingerprint = "{signer}"\n'
            "(every release is then checked against it)")
    if signer != configured:
        if not rotate_key:
            raise BakeryError(
                f"the signing key is {signer} but release/release.toml names {configured}: "
                f"hosts that trust {configured} would refuse this release",
                f"sign with {configured}; to move to {signer}, follow {ROTATION_DOCS} "
                "(announce it as [signing] next, then publish with --rotate-key)")
        if next_key != signer:
            raise BakeryError(
                f"--rotate-key: the signing key {signer} was not announced: release/release.toml "
                f"names {configured}" + (f" and next {next_key}" if next_key else " and no next key"),
                f'first publish with {configured} and [signing] next = "{signer}" so hosts '
                f"receive a keyring holding both ({ROTATION_DOCS})")
        if published and signer not in published:
            raise BakeryError(
                f"--rotate-key: {dest} was published with the key(s) {', '.join(published)}: "
                f"its hosts were never offered {signer}",
                f"publish into {dest} with {configured} and next = {signer} first ({ROTATION_DOCS})")
        keyring = (configured, signer)   # as in phase 1: hosts and snippets keep their keyring
    elif rotate_key and (not published or signer in published):
        raise BakeryError(f"--rotate-key: nothing to rotate: {signer} is the configured key"
                          + (f" and {dest} was published with it" if published else ""),
                          "drop --rotate-key; to rotate, announce the new key as [signing] next "
                          f"first ({ROTATION_DOCS})")
    else:
        keyring = (configured, *((next_key,) if next_key else ()))
    if published and signer not in published and not rotate_key:
        raise BakeryError(
            f"{dest} was published with the key(s) {', '.join(published)}, not with {signer}: "
            "hosts provisioned from it would refuse this release",
            f"sign with {published[0]}, or follow {ROTATION_DOCS}; to switch at once (a "
            "compromised key: every host then needs the new keyring by hand) pass --rotate-key")
    return KeyPlan(signer, keyring)
