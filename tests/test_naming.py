"""The naming rules: image file names both ways, sysupdate patterns, and name clashes."""
from __future__ import annotations

import pytest

from sysext_bakery.model import naming
from sysext_bakery.model.image import Image
from sysext_bakery.publish.sysupdate import PublishedImage


def test_patterns():
    assert naming.match_pattern("kubernetes", "v1.32") == "kubernetes-v1.32.@v-%a.raw"
    assert naming.match_pattern("docker") == "docker-@v-%a.raw"
    assert naming.extension_link("docker") == "/etc/extensions/docker.raw"


def test_file_names_both_ways():
    assert naming.image_filename("docker", "24.0.9", "x86-64") == "docker-24.0.9-x86-64.raw"
    assert naming.parse_image_filename("docker-24.0.9-x86-64.raw") == ("docker", "24.0.9", "x86-64")
    assert naming.parse_image_filename("docker-compose-2.1.0-arm64.raw") == (
        "docker-compose", "2.1.0", "arm64")
    assert naming.parse_image_filename("k3s-v1.32.2+k3s1-arm64.raw") == ("k3s", "v1.32.2+k3s1", "arm64")
    for not_an_image in ("SHA256SUMS", "docker-24.0.9-x86-64.raw\n", "docker-24.0.9-riscv64.raw",
                         "Docker-1-x86-64.raw", "docker-1 2-x86-64.raw"):
        assert naming.parse_image_filename(not_an_image) is None, not_an_image


def test_every_value_names_its_file_through_the_one_rule():
    image = Image("docker", "24.0.9", "arm64", ())
    published = PublishedImage("docker", "24.0.9", "arm64", "a" * 64, 1)
    assert image.filename == published.filename == "docker-24.0.9-arm64.raw"
    assert naming.parse_image_filename(image.filename) == ("docker", "24.0.9", "arm64")


@pytest.mark.parametrize("name, others, clash", [
    ("docker", ["docker-compose"], "docker-compose"),
    ("docker-compose", ["docker", "wasmtime"], "docker"),
    ("docker", ["dockerd", "docker_compose", "compose-docker"], None),
    ("docker", ["docker"], None),
])
def test_clash_either_way(name, others, clash):
    assert naming.clash(name, others) == clash


def test_clash_hint_renames_the_longer_name():
    assert naming.clash_hint("docker-compose", "docker") == (
        "rename 'docker-compose' so that it does not start with 'docker-', e.g. 'docker_compose'")


@pytest.mark.parametrize("name", ["docker", "docker-compose", "docker_compose", "k3s"])
def test_good_names(name):
    assert naming.name_problem(name) is None


@pytest.mark.parametrize("name", ["Docker", "docker-", "-docker", "docker--x", "docker\n",
                                  "a.b", "a" * 65, "", "d\x00"])
def test_bad_names(name):
    assert naming.name_problem(name)
