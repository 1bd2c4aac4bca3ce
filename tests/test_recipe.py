"""Recipe schema, loading and resolution: every refusal names the file and the key."""
from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from conftest import REPO
from sysext_bakery.errors import BakeryError
from sysext_bakery.model.image import Install
from sysext_bakery.recipe.docs import reference_markdown
from sysext_bakery.recipe.load import load_recipe, load_recipes, resolve_image
from sysext_bakery.model.version import stream_of, version_key

GOOD = """\
description = "Tool"
homepage = "https://example.org/"
arches = ["x86-64", "arm64"]

[[sources]]
url = "https://example.org/tool-{version}-{arch}.tar.gz"
install = { "tool/*" = "/usr/bin/" }
"""


def write(tmp_path: Path, text: str, name: str = "tool") -> Path:
    path = tmp_path / f"{name}.toml"
    path.write_text(textwrap.dedent(text))
    return path


def error_of(path: Path) -> str:
    with pytest.raises(BakeryError) as e:
        load_recipe(path)
    return e.value.message


def test_repo_recipes_load() -> None:
    recipes, errors = load_recipes(REPO / "recipes")
    assert errors == []
    assert {"docker", "containerd", "wasmtime"} <= set(recipes)
    docker = recipes["docker"]
    assert docker.streams == "major" and docker.reload_manager is None   # units ship: decided at stage
    assert docker.upholds == (("multi-user.target", ("containerd.service",)),
                              ("sockets.target", ("docker.socket",)))
    assert docker.sources[0].install == (Install("docker/*", "/usr/bin/"),)
    assert docker.files_dir == REPO / "recipes" / "docker" / "files"
    assert recipes["wasmtime"].sources[0].kind == "tar.xz"
    assert recipes["wasmtime"].reload_manager is None


def test_malformed_toml(tmp_path: Path) -> None:
    path = write(tmp_path, 'description = "x\n')
    assert error_of(path).startswith(f"{path}: not valid TOML: ")


def test_unknown_key_suggests(tmp_path: Path) -> None:
    path = write(tmp_path, 'stream = "major"\n' + GOOD)
    assert error_of(path) == f"{path}: stream: unknown key (did you mean 'streams'?)"


def test_unknown_nested_key(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD.replace("install =", 'sha = "x"\ninstall ='))
    assert f"{path}: sources[0].sha: unknown key" in error_of(path)


def test_destination_outside_usr(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD.replace('"/usr/bin/"', '"/etc/foo"'))
    assert error_of(path) == f"{path}: sources[0].install: destination /etc/foo is outside /usr and /opt"


def test_usr_sbin_destination(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD.replace('"/usr/bin/"', '"/usr/sbin/"'))
    assert error_of(path) == (f"{path}: sources[0].install: destination /usr/sbin/ is under /usr/sbin, "
                              "which is a symlink to bin on Flatcar; install into /usr/bin instead")


def test_bad_arch(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD.replace('"arm64"]', '"amd64"]'))
    assert error_of(path) == f"{path}: arches: 'amd64' is not one of x86-64, arm64"


def test_bad_type_and_missing_required_all_reported(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD.replace('description = "Tool"\n', "").replace(
        'arches = ["x86-64", "arm64"]', 'arches = "x86-64"'))
    message = error_of(path)
    assert f"{path}: arches: expected a string list, got str 'x86-64'" in message
    assert f"{path}: description: missing (required)" in message


def test_bad_template(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD.replace("{arch}.tar.gz", "{arc}.tar.gz"))
    assert error_of(path).startswith(f"{path}: sources[0].url: unknown placeholder {{arc}} in ")


def test_plain_http_refused(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD.replace("https://example.org/tool", "http://example.org/tool"))
    assert error_of(path) == (f"{path}: sources[0].url: URL 'http://example.org/tool-{{version}}-{{arch}}.tar.gz' "
                              "must start with https://")


def test_bad_install_mode_and_unit(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD.replace('"/usr/bin/"', '{ to = "/usr/bin/", mode = "rwx" }')
                 + '[units]\nupholds = { "multi-user.target" = ["tool"] }\n')
    message = error_of(path)
    assert "sources[0].install: 'tool/*': mode 'rwx' is not an octal string" in message
    assert "units.upholds: 'tool' is not a unit name" in message


def test_files_dir_only_usr_and_opt(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD)
    (tmp_path / "tool" / "files" / "etc").mkdir(parents=True)
    assert error_of(path) == f"{path}: {tmp_path}/tool/files/etc: static files may only live under usr/ and opt/"


def test_broken_recipe_does_not_hide_others(tmp_path: Path) -> None:
    write(tmp_path, GOOD, "good")
    write(tmp_path, "bogus = 1\n" + GOOD, "bad")
    recipes, errors = load_recipes(tmp_path)
    assert list(recipes) == ["good"]
    assert len(errors) == 1 and "bad.toml: bogus: unknown key" in str(errors[0])


def test_resolve_image_templates_and_lock() -> None:
    recipe = load_recipe(REPO / "recipes" / "containerd.toml")
    image = resolve_image(recipe, "1.7.27", "arm64", None)
    assert image.id == "containerd-1.7.27-arm64"
    containerd, runc = image.sources
    assert containerd.url == ("https://github.com/containerd/containerd/releases/download/v1.7.27/"
                              "containerd-static-1.7.27-linux-arm64.tar.gz")
    assert containerd.checksum_url == containerd.url + ".sha256sum"
    assert runc.url == "https://github.com/opencontainers/runc/releases/download/v1.2.5/runc.arm64"
    assert runc.kind == "file" and runc.install == (Install("runc.*", "/usr/bin/runc", 0o755),)
    pinned = resolve_image(recipe, "1.7.27", "arm64", [{"url": "https://m/a.tar.gz", "sha256": "ab" * 32},
                                                        {"url": "https://m/runc", "sha256": ""}])
    assert pinned.sources[0].url == "https://m/a.tar.gz" and pinned.sources[0].sha256 == "ab" * 32
    assert pinned.sources[1].sha256 is None
    with pytest.raises(BakeryError, match="pins 1 sources, .* has 2 for arm64"):
        resolve_image(recipe, "1.7.27", "arm64", [{"url": "https://m/a.tar.gz"}])


def test_streams_and_version_order() -> None:
    assert stream_of("24.0.9", "major") == "24"
    assert stream_of("v1.32.2+k3s1", "minor") == "v1.32"
    assert stream_of("1.7.27", "none") is None
    assert sorted(["24.0.10", "24.0.9", "3.0.0"], key=version_key) == ["3.0.0", "24.0.9", "24.0.10"]
    assert sorted(["1.0.1", "1.0", "1.0~rc1", "1.0~rc2", "1.0a"], key=version_key) == \
        ["1.0~rc1", "1.0~rc2", "1.0", "1.0.1", "1.0a"]   # systemd-analyze: 1.0a > 1.0.1


def test_reference_is_rendered_from_schema() -> None:
    text = reference_markdown()
    for key in ("`description`", "`arch-names`", "`checksum-url`", "`allow-setuid`", "`upholds`"):
        assert key in text
    docs = (REPO / "docs" / "recipes.md").read_text()
    assert text in docs, "docs/recipes.md is stale: run `python -m sysext_bakery.recipe.docs docs/recipes.md`"


def test_file_destination_replacing_a_host_directory(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD.replace('"/usr/bin/"', '"/usr/bin"'))
    assert error_of(path) == (f"{path}: sources[0].install: destination /usr/bin would replace "
                              "the host's whole /usr/bin; end it with '/' to install into it")


def test_replaces_and_conflicts_of_the_repo_recipes() -> None:
    recipes, _ = load_recipes(REPO / "recipes")
    assert recipes["docker"].replaces == ("docker-flatcar", "containerd-flatcar")
    assert recipes["docker"].conflicts == ("containerd",)
    assert recipes["containerd"].replaces == ("containerd-flatcar",)
    assert recipes["containerd"].conflicts == ("docker",)
    assert recipes["wasmtime"].replaces == () and recipes["wasmtime"].conflicts == ()
    image = resolve_image(recipes["docker"], "24.0.9", "x86-64", None)
    assert (image.replaces, image.conflicts) == (("docker-flatcar", "containerd-flatcar"), ("containerd",))


def test_replaces_takes_only_builtin_sysexts(tmp_path: Path) -> None:
    path = write(tmp_path, 'replaces = ["docker_flatcar", "docker-flatcar", "docker-flatcar"]\n' + GOOD)
    message = error_of(path)
    assert f"{path}: replaces: 'docker_flatcar' is not one of docker-flatcar, containerd-flatcar" in message
    assert f"{path}: replaces: duplicate entries" in message
    assert "replaces = " in reference_markdown() and "`containerd-flatcar`" in reference_markdown()


def test_conflicts_names_recipes(tmp_path: Path) -> None:
    path = write(tmp_path, 'conflicts = ["Docker", "tool", 3]\n' + GOOD)
    assert f"{path}: conflicts: expected a list of strings" in error_of(path)
    path = write(tmp_path, 'conflicts = ["Docker"]\n' + GOOD)
    assert f"{path}: conflicts: not a recipe: name 'Docker' must be lower-case" in error_of(path)
    path = write(tmp_path, 'conflicts = ["tool"]\n' + GOOD)
    assert f"{path}: conflicts: names the recipe itself ('tool')" in error_of(path)


K3S = GOOD.replace('url = "https://example.org/tool-{version}-{arch}.tar.gz"\ninstall = { "tool/*" = "/usr/bin/" }',
                   'url = "https://example.org/k3s"\ninstall = { "k3s" = "/usr/bin/k3s" }')


def test_symlinks_are_loaded_into_the_image(tmp_path: Path) -> None:
    recipe = load_recipe(write(tmp_path, K3S + '[symlinks]\n"/usr/bin/kubectl" = "k3s"\n'
                                               '"/usr/bin/crictl" = "/usr/bin/k3s"\n', "k3s"))
    image = resolve_image(recipe, "1.32.2_k3s1", "x86-64", None)
    assert [(s.path, s.target) for s in image.symlinks] == [("/usr/bin/kubectl", "k3s"),
                                                           ("/usr/bin/crictl", "/usr/bin/k3s")]
    assert image.symlinks[0].origin == f'{tmp_path}/k3s.toml: symlinks."/usr/bin/kubectl"'


@pytest.mark.parametrize("link, target, problem", [
    ("/etc/kubectl", "k3s", "symlink /etc/kubectl is outside /usr and /opt"),
    ("/bin/kubectl", "k3s", "symlink /bin/kubectl is outside /usr and /opt"),
    ("usr/bin/kubectl", "k3s", "symlink usr/bin/kubectl must be an absolute path"),
    ("/usr/lib/systemd", "../bin/k3s", "symlink /usr/lib/systemd would replace the host's whole "
                                       "directory /usr/lib/systemd"),
    ("/usr/bin", "k3s", "symlink /usr/bin would replace the host's whole directory /usr/bin"),
    ("/usr/sbin/kubectl", "../bin/k3s", "symlink /usr/sbin/kubectl is under /usr/sbin"),
    ("/usr/bin/kubectl/", "k3s", "must name the link itself"),
    ("/usr/bin/kubectl", "../../../etc/passwd", "target '../../../etc/passwd' leaves the image's /usr and /opt"),
    ("/usr/bin/kubectl", "/etc/passwd", "target '/etc/passwd' leaves the image's /usr and /opt"),
    ("/usr/bin/kubectl", "/usr/../etc/x", "leaves the image's /usr and /opt"),
    ("/usr/bin/kubectl", "", "is empty or has control characters"),
])
def test_bad_symlinks_are_refused(tmp_path: Path, link: str, target: str, problem: str) -> None:
    message = error_of(write(tmp_path, K3S + f'[symlinks]\n"{link}" = "{target}"\n', "k3s"))
    assert message.startswith(f"{tmp_path}/k3s.toml: symlinks")
    assert problem in message


def test_install_replace_is_loaded(tmp_path: Path) -> None:
    recipe = load_recipe(write(tmp_path, GOOD.replace(
        'install = { "tool/*" = "/usr/bin/" }',
        'install = { "tool/*" = "/usr/bin/", "tool/systemd/tool.service" = { to = '
        '"/usr/lib/systemd/system/tool.service", replace = { "/usr/sbin/" = "/usr/bin/", '
        '"/etc/default/tool" = "/usr/share/tool/defaults" } } }')))
    assert recipe.sources[0].install[1] == Install(
        "tool/systemd/tool.service", "/usr/lib/systemd/system/tool.service", None,
        (("/usr/sbin/", "/usr/bin/"), ("/etc/default/tool", "/usr/share/tool/defaults")))


@pytest.mark.parametrize("replace, problem", [
    ('"x"', "expected a table of \"old\" = \"new\" text, got 'x'"),
    ("{}", "expected a table of \"old\" = \"new\" text, got {}"),
    ('{ "" = "y" }', "an empty text cannot be replaced"),
    ('{ "a" = 1 }', "expected the new text as a string, got 1"),
])
def test_bad_replace_is_refused(tmp_path: Path, replace: str, problem: str) -> None:
    message = error_of(write(tmp_path, GOOD.replace(
        'install = { "tool/*" = "/usr/bin/" }',
        f'install = {{ "tool/x.service" = {{ to = "/usr/lib/systemd/system/x.service", replace = {replace} }} }}')))
    assert f'sources[0].install."tool/x.service".replace' in message and problem in message


@pytest.mark.parametrize("filename, kind", [
    ("restic_{version}_linux_{arch}.bz2", "bz2-file"), ("gitea-{version}-linux-{arch}.xz", "xz-file"),
    ("tool.gz", "gz-file"), ("tool.zst", "zst-file"), ("tool-{version}.tar.zst", "tar.zst"),
])
def test_single_compressed_file_kind_is_inferred(tmp_path: Path, filename: str, kind: str) -> None:
    recipe = load_recipe(write(tmp_path, GOOD.replace("tool-{version}-{arch}.tar.gz", filename)))
    assert recipe.sources[0].kind == kind
