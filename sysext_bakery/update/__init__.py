"""Upstream tracking: the desired state (release/versions.toml), new pins and their commit."""
