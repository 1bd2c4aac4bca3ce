"""The real `ignition-validate` (Debian's `ignition` package, which `scripts/setup --test`
installs), and an inverse translation from Ignition JSON back to Butane written
independently of sysext_bakery.publish.provision, to show both forms say the same."""
from __future__ import annotations

import base64
import shutil
import subprocess
import urllib.parse
from pathlib import Path

import pytest


def ignition_validate(text: str, tmp: Path) -> subprocess.CompletedProcess:
    binary = shutil.which("ignition-validate")
    if binary is None:
        pytest.skip("ignition-validate not installed: scripts/setup --test installs it "
                    "(apt-get install ignition)")
    path = tmp / "config.ign"
    path.write_text(text)
    return subprocess.run([binary, str(path)], capture_output=True, text=True, timeout=60)


def assert_valid(text: str, tmp: Path) -> None:
    proc = ignition_validate(text, tmp)
    assert proc.returncode == 0 and not proc.stdout.strip() and not proc.stderr.strip(), (
        proc.stdout + proc.stderr + text)


def decode_data_url(url: str) -> bytes:
    """RFC 2397, for the two encodings Butane writes without compression."""
    assert url.startswith("data:"), url
    meta, comma, data = url[len("data:"):].partition(",")
    assert comma, url
    if meta == ";base64":
        return base64.b64decode(data, validate=True)
    assert meta == "", url
    return urllib.parse.unquote_to_bytes(data)


def as_butane(ignition: dict) -> dict:
    """The Butane (flatcar 1.0.0) config an Ignition 3.3.0 config was translated from, for
    the fields the bakery writes: data URLs become `inline`, camelCase becomes snake_case."""
    assert ignition.pop("ignition") == {"version": "3.3.0"}
    out: dict = {"variant": "flatcar", "version": "1.0.0", **ignition}
    for f in out.get("storage", {}).get("files", []):
        contents = f.get("contents", {})
        if contents.get("source", "").startswith("data:"):
            assert contents.pop("compression") == ""
            f["contents"] = {"inline": decode_data_url(contents["source"]).decode()}
    for user in out.get("passwd", {}).get("users", []):
        if "sshAuthorizedKeys" in user:
            user["ssh_authorized_keys"] = user.pop("sshAuthorizedKeys")
    return out
