"""The recipe format: `SCHEMA`, the one description of a recipe, with the checks of single
values its keys name (templates, patterns, install destinations, symlinks).

The loader (`recipe.load`) validates a recipe against `SCHEMA` (`recipe.check` walks it), so
every error names the file and the key, and `docs/recipes.md` is rendered from it
(`recipe.docs`), so the reference cannot drift from the parser.
"""
from __future__ import annotations

import re
import string
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any, Callable

from sysext_bakery.build import hostdirs
from sysext_bakery.build.tree import resolve_link
from sysext_bakery.inputs import brief, brief_key
from sysext_bakery.model import extension_release, limits, naming
from sysext_bakery.model.arch import ARCHES
from sysext_bakery.model.url import url_problem
from sysext_bakery.model.image import ARCHIVE_KINDS, CHECKSUMS, COMPRESSIONS
from sysext_bakery.model.version import version_problem
from sysext_bakery.upstream.json_api import path_problem

OS_PROFILES = {"_any": None, "flatcar": "1.0"}   # ID= -> SYSEXT_LEVEL=
UNIT_SUFFIXES = (".service", ".socket", ".timer", ".path", ".mount", ".target")
UPSTREAM_TYPES = ("github-releases", "github-tags", "gitlab-tags", "html-index", "json-api",
                  "kubernetes-schedule")
# The sysexts Flatcar ships in /usr/share/flatcar/sysext/ and merges unless
# /etc/extensions/<name>.raw is a link to /dev/null. A name not listed here would mask
# nothing, so `replaces` only takes these; add one here when Flatcar ships another.
BUILTIN_SYSEXTS = ("docker-flatcar", "containerd-flatcar")
URL_PLACEHOLDERS = ("name", "version", "version_bare", "version_major", "version_minor",
                    "version_patch", "arch", "sysext_arch")


Check = Callable[[Any], "str | None"]   # returns what is wrong, or None


@dataclass(frozen=True)
class Key:
    name: str
    type: str            # "string" | "boolean" | "integer" | "string list" | "table" | "array of tables" | "map"
    doc: str
    required: bool = False
    default: Any = None
    choices: tuple[str, ...] = ()
    check: Check | None = None
    keys: tuple["Key", ...] = ()        # for "table" and "array of tables"
    values: str = ""                    # for "map": "string" | "string list" | "install target"
    example: str = ""


def _https(value: str) -> str | None:
    return url_problem(value)


def _template(extra: tuple[str, ...] = ()) -> Check:
    """Placeholders are bare names: a format spec (`{arch:>99999}`), a conversion (`{arch!r}`)
    or an attribute or index (`{arch.__class__}`, `{arch[0]}`) would let a recipe pad URLs to
    any length or reach into Python objects when the URL is rendered."""
    allowed = URL_PLACEHOLDERS + extra
    known = ", ".join("{" + a + "}" for a in allowed)

    def check(value: str) -> str | None:
        try:
            fields = [(f, spec, conv) for _, f, spec, conv in string.Formatter().parse(value)
                      if f is not None]
        except ValueError as e:
            return f"bad template {brief(value)}: {e}"
        for name, spec, conv in fields:
            if name not in allowed:
                return f"unknown placeholder {{{brief_key(name, 40)}}} in {brief(value)}; known: {known}"
            if spec or conv:
                shown = brief_key(f"{{{name}{'!' + conv if conv else ''}{':' + spec if spec else ''}}}", 40)
                return (f"placeholder {shown} in {brief(value)} has a "
                        f"{'conversion' if conv else 'format spec'}; write {{{name}}}")
        return None
    return check


def _url_template(value: str) -> str | None:
    return _template()(value) or _https(value)


def _regex_one_group(value: str) -> str | None:
    try:
        groups = re.compile(value).groups
    except (re.error, RecursionError, OverflowError) as e:   # a fuzzed pattern nests 10,000 groups deep
        return f"bad regular expression {brief(value)}: {e}"
    return None if groups == 1 else f"pattern {brief(value)} must have exactly one (group) capturing the version"


def _unit_name(value: str) -> str | None:
    if "/" in value or not value.endswith(UNIT_SUFFIXES):
        return f"{brief(value)} is not a unit name (expected a name ending in {', '.join(UNIT_SUFFIXES)})"
    return None


def _recipe_name(value: str) -> str | None:
    problem = naming.name_problem(value)
    return f"not a recipe: {problem}" if problem else None


def _key_file(value: str) -> str | None:
    p = PurePosixPath(value)
    if not value or p.is_absolute() or ".." in p.parts or p.parts[0] == "files":
        return (f"{value!r} must be a file name in the recipe's directory recipes/<name>/ "
                "(relative, without '..', not under files/)")
    return None


def install_target_problem(dest: str) -> str | None:
    """What is wrong with an install destination, or None. Shared with the files/ check."""
    p = PurePosixPath(dest)
    if not p.is_absolute() or ".." in p.parts:
        return f"destination {dest} must be an absolute path without '..'"
    if p.parts[1:2] not in (("usr",), ("opt",)) or len(p.parts) < 3:
        return f"destination {dest} is outside /usr and /opt"
    if not dest.endswith("/") and hostdirs.shadows_host_dir(str(p)):
        return (f"destination {dest} would replace the host's whole {p}; "
                f"end it with '/' to install into it")
    if p.parts[1:3] == ("usr", "sbin"):
        return (f"destination {dest} is under /usr/sbin, which is a symlink to bin on Flatcar; "
                "install into /usr/bin instead")
    if str(p) == "/usr/lib/os-release" or \
            p.parts[1:4] == tuple(extension_release.RELEASE_DIR.split("/")):
        return f"destination {dest} is written by the bakery itself"
    return None


def symlink_path_problem(path: str) -> str | None:
    """What is wrong with the path of a declared symlink, or None."""
    if path.endswith("/"):
        return f"symlink {path} must name the link itself, not a directory (no trailing '/')"
    if what := install_target_problem(path + "/"):     # the rules of an install destination
        return what.replace(f"destination {path}/", f"symlink {path}", 1)
    if hostdirs.shadows_host_dir(path):
        return (f"symlink {path} would replace the host's whole directory {path} once merged; "
                "put the link inside it")
    return None


def symlink_target_problem(path: str, target: str) -> str | None:
    """What is wrong with the target of the declared symlink at `path`, or None: it must
    stay under /usr or /opt of the image (whether it exists is checked when staging)."""
    if not target or any(ord(c) < 32 or c == "\x7f" for c in target):
        return f"symlink {path}: target {target!r} is empty or has control characters"
    if target.startswith("/"):
        resolved = resolve_link([], target.lstrip("/")) if ".." not in target.split("/") else None
    else:
        resolved = resolve_link(PurePosixPath(path).parent.as_posix().strip("/").split("/"), target)
    if resolved is None or resolved.split("/")[0] not in ("usr", "opt") or "/" not in resolved:
        return (f"symlink {path}: target {target!r} leaves the image's /usr and /opt "
                "(a link may only point at what the image ships)")
    return None


SOURCE_KEYS = (
    Key("url", "string", "Download URL template (https). Placeholders: "
        + ", ".join("`{" + p + "}`" for p in URL_PLACEHOLDERS) + ".", required=True,
        check=_url_template,
        example='"https://download.docker.com/linux/static/stable/{arch}/docker-{version}.tgz"'),
    Key("checksum-url", "string", "Where upstream publishes the checksum of `url`; also takes "
        "`{url}`. Any of: a bare digest, `<hex>  <file>`, `<hex> *<file>`, BSD `SHA256 (<file>) "
        "= <hex>`, or a list of many files, where the line naming the download's file name is "
        "used (none: an error). Without it (and without `checksum = \"github-digest\"`), the "
        "first fetch records the sha256 in the lock (trust on first use).",
        check=_template(("url",)), example='"{url}.sha256sum"'),
    Key("checksum", "string", "The algorithm of `checksum-url`, or `github-digest`: the "
        "release asset's `digest` (`sha256:<hex>`) from GitHub's REST API "
        "(`GET /repos/{owner}/{repo}/releases/tags/{tag}`, repo and tag taken from a "
        "`https://github.com/<owner>/<repo>/releases/download/<tag>/<asset>` url; no "
        "`checksum-url` then). A sha512 is checked while downloading; the lock records the "
        "sha256 either way.", default="sha256", choices=CHECKSUMS),
    Key("signature-url", "string", "Detached gpg signature over the checksum file (needs "
        "`checksum-url` and `signature-key`); also takes `{url}` and `{checksum_url}`. The "
        "checksum file is only trusted if it verifies against exactly that key.",
        check=_template(("url", "checksum_url")), example='"{checksum_url}.sig"'),
    Key("signature-key", "string", "File name of an armored public key in `recipes/<name>/` "
        "(not under `files/`) that `signature-url` must verify against; document its "
        "fingerprint and source next to it.", check=_key_file, example='"hashicorp.asc"'),
    Key("since", "string", "The source applies only to versions from this one on "
        "(systemd version order), e.g. a format switch upstream made in that release.",
        check=version_problem, example='"0.14.0"'),
    Key("until", "string", "The source applies only to versions before this one (systemd "
        "version order); with `since`: since <= version < until.", check=version_problem,
        example='"0.14.0"'),
    Key("arch-names", "map", "Our arch -> upstream spelling for this source's `{arch}`, "
        "overriding the recipe-level `[arch-names]` (`\"\"` is allowed: k3s's `k3s{arch}`).",
        values="string", example='{ x86-64 = "", arm64 = "-arm64" }'),
    Key("type", "string", "Archive type; inferred from the URL's file name when absent "
        "(`file` = a single plain file such as a static binary; `gz-file`, `xz-file`, "
        "`bz2-file`, `zst-file` = one compressed file such as `tool_1.0_linux_amd64.bz2`, "
        "shipped decompressed and named as the URL without the suffix).", choices=ARCHIVE_KINDS),
    Key("version", "string", "A companion component's own version, used as `{version}` (and the "
        "`{version_*}` helpers) in this source's URLs, e.g. the runc shipped with containerd.",
        check=version_problem, example='"1.2.5"'),
    Key("arches", "string list", "Only fetch this source for these arches (default: all).",
        choices=tuple(ARCHES)),
    Key("install", "map", "Install map: path or glob inside the source -> destination under "
        "`/usr` or `/opt`. `*` matches within one path segment, `**` any depth; a destination "
        "ending in `/` is a directory (files land under their own name; with `**` the path from "
        "the `**` on is kept), "
        "otherwise the exact file name. A value may be a table `{ to = \"/usr/bin/\", mode = "
        "\"0755\", replace = { \"old\" = \"new\" } }`: `replace` rewrites literal text in "
        "the (text, not ELF) files the entry installs, in order, e.g. an upstream unit's "
        "`/usr/sbin/` paths; each replacement must match. Every pattern must match "
        "something.", required=True,
        values="install target", example='{ "docker/*" = "/usr/bin/" }'),
    Key("allow-setuid", "boolean", "Accept set-uid/set-gid files from this source.", default=False),
    Key("no-checksum", "string", "Why this source is trusted on first use: upstream publishes "
        "nothing to verify it against. Shown in the catalogue table of docs/recipes.md; the "
        "catalogue tests require it on every source without a checksum.",
        example='"download.docker.com publishes no checksums for the static tarballs"'),
)

SCHEMA = (
    Key("description", "string", "One line saying what the extension provides.", required=True),
    Key("homepage", "string", "Upstream project or install documentation.", required=True,
        check=_https),
    Key("arches", "string list", "Architectures to build, in systemd's spelling.",
        required=True, choices=tuple(ARCHES), example='["x86-64", "arm64"]'),
    Key("streams", "string", "How versions group into streams for `build:<name>-<stream>` and "
        "stream sysupdate configs: `major` (docker 24.0.9 -> `docker-24`), `minor` "
        "(kubernetes v1.32.2 -> `kubernetes-v1.32`) or `none`.", default="none",
        choices=("major", "minor", "none")),
    Key("os", "string", "OS profile for extension-release: `_any` (ID=_any: any OS) or "
        "`flatcar` (ID=flatcar, SYSEXT_LEVEL=1.0).", default="_any", choices=tuple(OS_PROFILES)),
    Key("format", "string", "Image file system.", default="squashfs", choices=("squashfs", "erofs")),
    Key("compression", "string", "Compressor; the first is the default: "
        + "; ".join(f"{fmt}: {', '.join(c)}" for fmt, c in COMPRESSIONS.items())
        + ". `BAKERY_COMPRESSION` overrides it for one build."),
    Key("reload-manager", "boolean", "Set EXTENSION_RELOAD_MANAGER=1 so systemd reloads units "
        "on merge. Default: true when the image ships units."),
    Key("upstream", "table", "How upstream releases are discovered (upstream tracking; see "
        "Upstream tracking above).", keys=(
        Key("type", "string", "Discovery method.", required=True, choices=UPSTREAM_TYPES),
        Key("repo", "string", "`owner/name` for github-* types, `group/project` for gitlab-tags."),
        Key("url", "string", "Index page (html-index), JSON endpoint (json-api) or schedule "
            "(kubernetes-schedule; default: the Kubernetes website's `schedule.yaml`).",
            check=_https),
        Key("pattern", "string", "Regular expression with one group capturing the version; a "
            "tag it does not match is not a release. Without it a tag's leading `v` is "
            "stripped. Required for html-index, where every match in the page counts.",
            check=_regex_one_group, example=r"'docker-(\d+\.\d+\.\d+)\.tgz'"),
        Key("prefix", "string", "Put in front of every discovered version "
            "(kubernetes: `v` + `1.32.2`).", example='"v"'),
        Key("prereleases", "boolean", "Also take GitHub releases marked pre-release "
            "(github-releases; elsewhere `pattern` or `filter` decide).", default=False),
        Key("path", "string", "json-api: where the tags are: field names joined by `.`, `[*]` "
            "for every element of a list, `[N]` for one.", check=path_problem,
            example='"[*].version"'),
        Key("filter", "map", "json-api: keep only items (the objects holding the path's last "
            "field) whose fields equal these values; a dotted key looks into nested objects.",
            values="scalar", example='{ is_prerelease = false, license_class = "oss" }'),
        Key("next-page", "map", "json-api: query parameter -> field of a page's last item; the "
            "next page is asked with it until a page selects nothing.", values="string",
            example='{ after = "timestamp_created" }'),
    )),
    Key("arch-names", "map", "Our arch -> upstream spelling, available as `{arch}` in URLs "
        "(default: the `uname -m` spelling: x86_64, aarch64).", values="string",
        example='{ x86-64 = "amd64", arm64 = "arm64" }'),
    Key("sources", "array of tables", "What to download for each image, in order.",
        keys=SOURCE_KEYS),
    Key("replaces", "string list", "Built-in sysexts of the OS this image takes the place of. "
        "The release's Butane snippets mask each one (`/etc/extensions/<name>.raw` -> "
        "`/dev/null`), so the host does not merge the vendor's copy beside this image.",
        choices=BUILTIN_SYSEXTS, example='["docker-flatcar", "containerd-flatcar"]'),
    Key("conflicts", "string list", "Recipes whose images ship some of the same paths as this "
        "one by design, so the two must not be merged on one host. `doit overlaps` fails on a "
        "path two recipes ship unless one of them lists the other here; `index.json` carries "
        "the list for `bakery compose`.", check=_recipe_name, example='["containerd"]'),
    Key("symlinks", "map", "Symlinks the image ships: link path (under `/usr` or `/opt`, not a "
        "host directory) -> target, relative to the link's directory or absolute. The target "
        "must resolve to something the image itself ships, and the link must not clash with "
        "an installed file.", values="link target", check=symlink_path_problem,
        example='{ "/usr/bin/kubectl" = "k3s" }'),
    Key("limits", "table", "How much one source's archive may write into the image (the "
        "defence against decompression bombs; a build over a limit fails naming the member). "
        "Raise them for tools that really are large.", keys=(
        Key("unpacked", "string", "Bytes one source may write in all (binary units K, M, G, T).",
            default=limits.show(limits.DEFAULT.unpacked).replace(" ", "").removesuffix("iB"),
            check=limits.size_problem, example='"8G"'),
        Key("member", "string", "Bytes one member may write (default: `unpacked` when that is "
            "set, else this).", default=limits.show(limits.DEFAULT.member).replace(" ", "")
            .removesuffix("iB"), check=limits.size_problem, example='"4G"'),
        Key("ratio", "integer", "Bytes written per byte of the download, enforced once a source "
            f"has written {limits.show(limits.RATIO_FLOOR)}.", default=limits.DEFAULT.ratio,
            check=limits.ratio_problem, example="400"),
    )),
    Key("units", "table", "Enabling units without /etc symlinks.", keys=(
        Key("upholds", "map", "Target or unit -> units it keeps running (`Upholds=` drop-ins "
            "`usr/lib/systemd/system/<target>.d/10-<name>-<unit>.conf`).", values="string list",
            check=_unit_name, example='{ "sockets.target" = ["docker.socket"] }'),
    )),
)
