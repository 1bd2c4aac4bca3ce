"""The setup unit (build/hostsetup.py): generated at stage time for images that ship sysusers.d
or tmpfiles.d files, checked by validate, and its command lines run for real against a fake
root merged by the real systemd-sysext."""
from __future__ import annotations

import shlex
import shutil
from pathlib import Path

import pytest

from elf import make_elf
from sysext import make_root, requires_sysext, run_merged
from sysext_bakery.build import hostsetup
from sysext_bakery.build.pack import pack
from sysext_bakery.build.stage import stage_image
from sysext_bakery.build.validate import validate_tree
from sysext_bakery.errors import BakeryError
from sysext_bakery.model.image import Image

REPO = Path(__file__).resolve().parent.parent
UNITS = "usr/lib/systemd/system"


def put(root: Path, rel: str, text: str) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def files_dir(tmp_path: Path, units: bool = True, tmpfiles: bool = True) -> Path:
    files = tmp_path / "files"
    put(files, "usr/lib/sysusers.d/tool.conf", "g tool -\n")
    if tmpfiles:
        put(files, "usr/lib/tmpfiles.d/tool.conf", "d /var/lib/tool 0750 root tool -\n")
    if units:
        put(files, f"{UNITS}/tool.socket", "[Socket]\nListenStream=/run/tool.sock\nSocketGroup=tool\n")
        put(files, f"{UNITS}/tool.service", "[Service]\nExecStart=/usr/bin/tool\n")
        put(files, f"{UNITS}/tool@.service", "[Service]\nExecStart=/usr/bin/tool %i\n")
        put(files, f"{UNITS}/sockets.target.d/10-extra.conf", "[Unit]\nUpholds=tool.socket\n")
    return files


def staged(tmp_path: Path, files: Path) -> Path:
    dest = tmp_path / "tree"
    stage_image(Image(name="tool", version="1.0", arch="x86-64", sources=(), files_dir=files), [], dest)
    return dest


def test_setup_unit_applies_the_images_files_before_its_units(tmp_path):
    tree = staged(tmp_path, files_dir(tmp_path))
    unit = (tree / UNITS / "tool-sysext-setup.service").read_text()
    assert unit == (
        "[Unit]\n"
        "Description=Users, groups and files of the tool system extension\n"
        "DefaultDependencies=no\n"
        "After=local-fs.target systemd-sysusers.service systemd-tmpfiles-setup.service\n"
        "Before=tool.service tool.socket tool@.service shutdown.target\n"
        "Conflicts=shutdown.target\n"
        "\n[Service]\n"
        "Type=oneshot\n"
        "RemainAfterExit=yes\n"
        "ExecStart=/usr/bin/systemd-sysusers /usr/lib/sysusers.d/tool.conf\n"
        "ExecStart=/usr/bin/systemd-tmpfiles --create /usr/lib/tmpfiles.d/tool.conf\n")
    for name in ("tool.service", "tool.socket", "tool@.service"):
        assert (tree / UNITS / f"{name}.d/10-tool-sysext-setup.conf").read_text() == \
            "[Unit]\nWants=tool-sysext-setup.service\nAfter=tool-sysext-setup.service\n"
    assert not (tree / UNITS / "sockets.target.d/10-tool-sysext-setup.conf").exists()
    assert not (tree / UNITS / "multi-user.target.d").exists()   # its units pull it in
    assert "EXTENSION_RELOAD_MANAGER=1" in (
        tree / "usr/lib/extension-release.d/extension-release.tool").read_text()


def test_an_image_without_units_has_it_upheld(tmp_path):
    tree = staged(tmp_path, files_dir(tmp_path, units=False, tmpfiles=False))
    assert (tree / UNITS / "multi-user.target.d/10-tool-sysext-setup.conf").read_text() == \
        "[Unit]\nUpholds=tool-sysext-setup.service\n"
    assert "Before=shutdown.target\n" in (tree / UNITS / "tool-sysext-setup.service").read_text()
    assert "EXTENSION_RELOAD_MANAGER=1" in (
        tree / "usr/lib/extension-release.d/extension-release.tool").read_text()


def test_no_sysusers_or_tmpfiles_no_setup_unit(tmp_path):
    files = tmp_path / "files"
    put(files, f"{UNITS}/tool.service", "[Service]\nExecStart=/usr/bin/tool\n")
    tree = staged(tmp_path, files)
    assert sorted(p.name for p in (tree / UNITS).iterdir()) == ["tool.service"]


def test_a_recipe_cannot_ship_its_own_setup_unit(tmp_path):
    files = files_dir(tmp_path)
    put(files, f"{UNITS}/tool-sysext-setup.service", "[Service]\n")
    with pytest.raises(BakeryError, match="tool-sysext-setup.service"):
        staged(tmp_path, files)
    assert not (tmp_path / "tree").exists()


def test_validate_requires_the_setup_unit_to_cover_every_file(tmp_path):
    tree = staged(tmp_path, files_dir(tmp_path))
    unit = tree / UNITS / "tool-sysext-setup.service"
    good = unit.read_text()
    unit.write_text(good.replace("ExecStart=/usr/bin/systemd-tmpfiles --create "
                                 "/usr/lib/tmpfiles.d/tool.conf\n", ""))
    (tree / UNITS / "tool.socket.d/10-tool-sysext-setup.conf").unlink()
    with pytest.raises(BakeryError) as err:
        validate_tree(tree, "tool", "x86-64")
    assert err.value.message.splitlines()[1:] == [
        f"  {UNITS}/tool-sysext-setup.service: no ExecStart=/usr/bin/systemd-tmpfiles --create "
        "/usr/lib/tmpfiles.d/tool.conf",
        f"  {UNITS}/tool.socket: starts without tool-sysext-setup.service (no drop-in in "
        "tool.socket.d wants it)"]
    unit.unlink()
    with pytest.raises(BakeryError, match="tool-sysext-setup.service: missing: the image ships "
                       "/usr/lib/sysusers.d/tool.conf, /usr/lib/tmpfiles.d/tool.conf"):
        validate_tree(tree, "tool", "x86-64")


def rooted(line: str) -> str:
    """An ExecStart= line as it runs against a fake root: `--root=$ROOT`, and the file
    arguments under $ROOT (systemd-sysusers and -tmpfiles do not prefix explicit paths)."""
    program, *args = shlex.split(line)
    return " ".join([program, '--root="$ROOT"',
                     *(f'"$ROOT"{shlex.quote(a)}' if a.startswith("/") else shlex.quote(a) for a in args)])


def exec_lines(unit_text: str) -> list[str]:
    return [line.removeprefix("ExecStart=") for line in unit_text.splitlines()
            if line.startswith("ExecStart=")]


@pytest.mark.root
@requires_sysext
@pytest.mark.skipif(not (shutil.which("systemd-sysusers") and shutil.which("systemd-tmpfiles")),
                    reason="systemd-sysusers and systemd-tmpfiles run the setup unit's commands")
def test_setup_commands_create_the_group_and_directory_after_a_real_merge(tmp_path):
    tree = staged(tmp_path, files_dir(tmp_path))
    put(tree, "usr/bin/tool", "")
    (tree / "usr/bin/tool").write_bytes(make_elf("x86-64"))
    image = tmp_path / "tool.raw"
    pack(tree, image, "squashfs", "zstd")
    root = make_root(tmp_path / "host")
    (root / "etc/group").write_text("root:x:0:\n")   # a host whose /etc is already set up
    script = "set -e\n" + "".join(
        f"{rooted(line)}\n" for line in exec_lines(
            (tree / UNITS / "tool-sysext-setup.service").read_text()))
    done = run_merged(root, {"tool": image}, script)
    assert done.returncode == 0, done.stderr
    groups = dict(line.split(":", 1) for line in (root / "etc/group").read_text().splitlines())
    assert set(groups) == {"root", "tool"}
    gid = int(groups["tool"].split(":")[1])
    made = root / "var/lib/tool"
    assert made.is_dir() and (made.stat().st_mode & 0o777, made.stat().st_gid) == (0o750, gid)
    assert not (root / "usr/lib/sysusers.d").exists(), "unmerged: the files were the image's"


def test_plan_is_none_for_a_tree_without_conf_files(tmp_path):
    put(tmp_path, "usr/lib/sysusers.d/README", "not a .conf\n")
    assert hostsetup.plan_setup(tmp_path, "tool") is None
