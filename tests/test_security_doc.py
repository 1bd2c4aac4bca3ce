"""docs/security.md names the test behind each guarantee: every name it gives must exist."""
from __future__ import annotations

import re

from conftest import REPO


def test_every_test_named_in_security_md_exists():
    doc = (REPO / "docs/security.md").read_text()
    named = sorted(set(re.findall(r"(test_\w+\.py)::(test_\w+)", doc)))
    assert len(named) > 30
    missing = [f"{f}::{t}" for f, t in named
               if not (REPO / "tests" / f).is_file()
               or not re.search(rf"^def {t}\(", (REPO / "tests" / f).read_text(), re.M)]
    assert missing == []
