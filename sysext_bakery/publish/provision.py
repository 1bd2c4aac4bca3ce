"""Provisioning configs: one model, rendered both as a Butane config and as the Ignition
config Butane translates it to, so the two published forms cannot disagree.

Butane variant `flatcar` 1.0.0 translates to Ignition spec 3.3.0 (Butane docs, "Configuration
specifications"). 1.1.0 would mean Ignition 3.4.0, which Ignition before 2.15 refuses
(Debian 12's `ignition-validate` is 2.14), so 1.0.0 is what every Flatcar with Ignition v3
accepts. Inline contents become `data:` URLs (RFC 2397) the way Butane encodes them: the
shorter of `data:,<percent-escaped>` and `data:;base64,<base64>`, with `compression: ""`.
Butane may also gzip them; that is left out (Butane's `NoResourceAutoCompression`), because
the gzip bytes depend on Go's deflate and would make the output differ from run to run of
other tools for no gain in what the host ends up with.
"""
from __future__ import annotations

import base64
import json
import posixpath
import re
from dataclasses import MISSING, dataclass, fields, replace
from typing import Any, Iterable

import yaml

from sysext_bakery.errors import BakeryError

BUTANE_VARIANT = "flatcar"
BUTANE_VERSION = "1.0.0"
IGNITION_VERSION = "3.3.0"
HASH = re.compile(r"(sha256-[0-9a-f]{64}|sha512-[0-9a-f]{128})")
SCHEMES = ("http", "https", "tftp", "s3", "gs", "arn", "data")   # what Ignition 3.3 fetches
UNIT_SUFFIXES = (".service", ".socket", ".target", ".timer", ".path", ".mount", ".automount",
                 ".swap", ".slice", ".scope", ".device")
# dataurl.Escape (which Butane uses) keeps RFC 2396's unreserved characters as they are
_UNRESERVED = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.!~*'()")


@dataclass(frozen=True)
class File:
    """A file: `inline` text, or downloaded from `source` and checked against `hash`
    (`sha256-<hex>` or `sha512-<hex>`); neither makes an empty file."""
    path: str
    inline: str | None = None
    source: str | None = None
    hash: str | None = None
    mode: int | None = None
    overwrite: bool | None = None


@dataclass(frozen=True)
class Directory:
    path: str
    mode: int | None = None
    overwrite: bool | None = None


@dataclass(frozen=True)
class Link:
    path: str
    target: str
    hard: bool = False
    overwrite: bool | None = None


@dataclass(frozen=True)
class Dropin:
    name: str          # <something>.conf
    contents: str


@dataclass(frozen=True)
class Unit:
    name: str
    enabled: bool | None = None
    contents: str | None = None
    dropins: tuple[Dropin, ...] = ()


@dataclass(frozen=True)
class User:
    name: str
    uid: int | None = None
    groups: tuple[str, ...] = ()
    ssh_authorized_keys: tuple[str, ...] = ()


@dataclass(frozen=True)
class Group:
    name: str
    gid: int | None = None


@dataclass(frozen=True)
class Config:
    directories: tuple[Directory, ...] = ()
    files: tuple[File, ...] = ()
    links: tuple[Link, ...] = ()
    units: tuple[Unit, ...] = ()
    users: tuple[User, ...] = ()
    groups: tuple[Group, ...] = ()


# ---- validation ----------------------------------------------------------------------------

def validate(config: Config, origin: str = "provisioning config") -> None:
    """Refuse what Ignition would refuse at boot (relative or duplicate paths, bad hashes,
    unknown unit types), plus downloads without a hash: every file the bakery has a host
    download is pinned."""
    def fail(where: str, what: str, hint: str) -> None:
        raise BakeryError(f"{origin}: {where}: {what}", hint)

    paths: set[str] = set()
    nodes = [("storage.directories", n) for n in config.directories] + \
        [("storage.files", n) for n in config.files] + [("storage.links", n) for n in config.links]
    for kind, node in nodes:
        where = f"{kind} {node.path!r}"
        if not posixpath.isabs(node.path) or posixpath.normpath(node.path) != node.path:
            fail(where, "path must be absolute and normalized", "e.g. /etc/extensions/docker.raw")
        if node.path in paths:
            fail(where, "path appears twice", "Ignition refuses a path listed twice in a config")
        paths.add(node.path)
        mode = getattr(node, "mode", None)
        if mode is not None and not (isinstance(mode, int) and 0 <= mode <= 0o7777):
            fail(where, f"mode {mode!r} is not a permission mode", "e.g. 0o644")
    for f in config.files:
        where = f"storage.files {f.path!r}"
        if f.inline is not None and f.source is not None:
            fail(where, "has both inline contents and a source", "give one of them")
        if f.source is not None:
            scheme = f.source.partition(":")[0]
            if scheme not in SCHEMES or not f.source.partition(":")[2]:
                fail(where, f"source {f.source!r} is not a URL Ignition fetches",
                     f"use one of the schemes {', '.join(SCHEMES)}")
            if scheme != "data" and f.hash is None:
                fail(where, f"downloads {f.source} without a verification hash",
                     "pin it: hash = 'sha256-' + the sha256 of the file")
        if f.hash is not None and (f.source is None or not HASH.fullmatch(f.hash)):
            fail(where, f"verification hash {f.hash!r} is not sha256-<64 hex> or "
                 "sha512-<128 hex> of a source", "hash the downloaded file: sha256sum FILE")
    for link in config.links:
        if not link.target:
            fail(f"storage.links {link.path!r}", "has no target", "give the path it points to")
    names: set[str] = set()
    for unit in config.units:
        where = f"systemd.units {unit.name!r}"
        if "/" in unit.name or not unit.name.endswith(UNIT_SUFFIXES) or unit.name in names:
            fail(where, "not a unit file name, or listed twice",
                 f"a unit name ends with one of {', '.join(UNIT_SUFFIXES)}, once per config")
        names.add(unit.name)
        dropins = [d.name for d in unit.dropins]
        if any("/" in d or not d.endswith(".conf") for d in dropins) or len(set(dropins)) < len(dropins):
            fail(where, f"drop-in names {dropins} must be distinct <name>.conf", "e.g. docker.conf")
    for kind, entries in (("passwd.users", config.users), ("passwd.groups", config.groups)):
        seen = [e.name for e in entries]
        if len(set(seen)) < len(seen) or not all(seen):
            fail(kind, f"names {seen} must be distinct and not empty", "list each once")


# ---- rendering -----------------------------------------------------------------------------

class _Mode(int):
    """A permission mode, written as the octal literal Butane's docs use (`0644`)."""


class _Dumper(yaml.SafeDumper):
    pass


_Dumper.add_representer(_Mode, lambda d, v: d.represent_scalar("tag:yaml.org,2002:int", f"0{v:o}"))
# unit texts and other multi-line contents stay readable as literal blocks
_Dumper.add_representer(str, lambda d, v: d.represent_scalar(
    "tag:yaml.org,2002:str", v, style="|" if "\n" in v else None))


def data_url(data: bytes) -> str:
    """The `data:` URL Butane makes of inline contents (without automatic gzip)."""
    escaped = "," + "".join(chr(b) if b in _UNRESERVED else f"%{b:02X}" for b in data)
    b64 = ";base64," + base64.b64encode(data).decode()
    return "data:" + (b64 if len(b64) < len(escaped) else escaped)


def _clean(d: dict) -> dict:
    return {k: v for k, v in d.items() if v not in (None, (), [], {})}


def _tree(config: Config, ignition: bool) -> dict[str, Any]:
    """The shared shape of both forms; they differ only in the marked places."""
    mode = (lambda m: m) if ignition else (lambda m: None if m is None else _Mode(m))

    def contents(f: File) -> dict | None:
        if f.inline is not None:
            return ({"compression": "", "source": data_url(f.inline.encode())} if ignition
                    else {"inline": f.inline})
        if f.source is None:
            return None
        return _clean({"source": f.source, "verification": _clean({"hash": f.hash})})

    storage = _clean({
        "directories": [_clean({"path": d.path, "mode": mode(d.mode), "overwrite": d.overwrite})
                        for d in config.directories],
        "files": [_clean({"path": f.path, "mode": mode(f.mode), "overwrite": f.overwrite,
                          "contents": contents(f)}) for f in config.files],
        "links": [_clean({"path": x.path, "target": x.target, "hard": x.hard,
                          "overwrite": x.overwrite}) for x in config.links],
    })
    keys = "sshAuthorizedKeys" if ignition else "ssh_authorized_keys"
    passwd = _clean({
        "users": [_clean({"name": u.name, "uid": u.uid, "groups": list(u.groups),
                          keys: list(u.ssh_authorized_keys)}) for u in config.users],
        "groups": [_clean({"name": g.name, "gid": g.gid}) for g in config.groups],
    })
    systemd = _clean({"units": [_clean({
        "name": u.name, "enabled": u.enabled, "contents": u.contents,
        "dropins": [{"name": d.name, "contents": d.contents} for d in u.dropins]})
        for u in config.units]})
    head = ({"ignition": {"version": IGNITION_VERSION}} if ignition
            else {"variant": BUTANE_VARIANT, "version": BUTANE_VERSION})
    return head | _clean({"passwd": passwd, "storage": storage, "systemd": systemd})


def butane_yaml(config: Config, comment: str = "") -> str:
    """The Butane config, after `comment` (each line becomes a `# ` line)."""
    validate(config)
    header = "".join(f"# {line}".rstrip() + "\n" for line in comment.splitlines())
    return header + yaml.dump(_tree(config, ignition=False), Dumper=_Dumper, sort_keys=False,
                              default_flow_style=False, allow_unicode=True, width=1 << 16)


def ignition_json(config: Config) -> str:
    """The Ignition config `butane --strict` makes of `butane_yaml(config)`."""
    validate(config)
    return json.dumps(_tree(config, ignition=True), indent=2, ensure_ascii=False) + "\n"


# ---- reading Butane back, merging ----------------------------------------------------------

_FIELDS: dict[type, dict[str, type]] = {
    Directory: {"path": str, "mode": int, "overwrite": bool},
    File: {"path": str, "mode": int, "overwrite": bool, "contents": dict},
    Link: {"path": str, "target": str, "hard": bool, "overwrite": bool},
    Unit: {"name": str, "enabled": bool, "contents": str, "dropins": list},
    Dropin: {"name": str, "contents": str},
    User: {"name": str, "uid": int, "groups": list, "ssh_authorized_keys": list},
    Group: {"name": str, "gid": int},
}


def _table(node: Any, where: str, origin: str, known: dict[str, type]) -> dict[str, Any]:
    if not isinstance(node, dict):
        raise BakeryError(f"{origin}: {where}: expected a mapping, got {node!r}")
    unknown = sorted(set(node) - set(known))
    if unknown:
        raise BakeryError(f"{origin}: {where}: key(s) {', '.join(map(str, unknown))} are not "
                          "supported here", f"supported: {', '.join(known)}")
    for key, value in node.items():
        kind = known[key]
        # a YAML `true` is an int to Python: refused where a number is meant, and vice versa
        if not isinstance(value, kind) or isinstance(value, bool) != (kind is bool):
            raise BakeryError(f"{origin}: {where}.{key}: expected {kind.__name__}, got {value!r}")
    return node


def _entries(node: dict, key: str, cls: type, where: str, origin: str) -> list:
    items = node.get(key, [])
    if not isinstance(items, list):
        raise BakeryError(f"{origin}: {where}.{key}: expected a list, got {items!r}")
    out = []
    for i, item in enumerate(items):
        here = f"{where}.{key}[{i}]"
        data = dict(_table(item, here, origin, _FIELDS[cls]))
        missing = [f.name for f in fields(cls) if f.default is MISSING
                   and f.default_factory is MISSING and f.name not in data]
        if missing:
            raise BakeryError(f"{origin}: {here}: missing {', '.join(missing)}")
        if cls is File and "contents" in data:
            c = _table(data.pop("contents"), f"{here}.contents", origin,
                       {"inline": str, "source": str, "verification": dict})
            data |= {k: c[k] for k in ("inline", "source") if k in c}
            if "verification" in c:
                data["hash"] = _table(c["verification"], f"{here}.contents.verification",
                                      origin, {"hash": str}).get("hash")
        if cls is Unit and "dropins" in data:
            data["dropins"] = tuple(_entries(data, "dropins", Dropin, here, origin))
        for name in ("groups", "ssh_authorized_keys"):
            if cls is User and name in data:
                if not all(isinstance(v, str) for v in data[name]):
                    raise BakeryError(f"{origin}: {here}.{name}: expected a list of strings")
                data[name] = tuple(data[name])
        out.append(cls(**data))
    return out


def parse_butane(text: str, origin: str) -> Config:
    """A Butane config (variant flatcar 1.0.0) as the model, limited to what the model holds:
    anything else is refused rather than silently dropped."""
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise BakeryError(f"{origin}: not valid YAML: {e}", "fix the syntax") from None
    doc = _table(doc, "(top level)", origin, {"variant": str, "version": str, "passwd": dict,
                                              "storage": dict, "systemd": dict})
    if (doc.get("variant"), doc.get("version")) != (BUTANE_VARIANT, BUTANE_VERSION):
        raise BakeryError(f"{origin}: variant/version {doc.get('variant')!r} "
                          f"{doc.get('version')!r}: only {BUTANE_VARIANT} {BUTANE_VERSION} is read")
    storage = _table(doc.get("storage", {}), "storage", origin,
                     {"directories": list, "files": list, "links": list})
    passwd = _table(doc.get("passwd", {}), "passwd", origin, {"users": list, "groups": list})
    systemd = _table(doc.get("systemd", {}), "systemd", origin, {"units": list})
    config = Config(
        directories=tuple(_entries(storage, "directories", Directory, "storage", origin)),
        files=tuple(_entries(storage, "files", File, "storage", origin)),
        links=tuple(_entries(storage, "links", Link, "storage", origin)),
        units=tuple(_entries(systemd, "units", Unit, "systemd", origin)),
        users=tuple(_entries(passwd, "users", User, "passwd", origin)),
        groups=tuple(_entries(passwd, "groups", Group, "passwd", origin)))
    validate(config, origin)
    return config


def merge(configs: Iterable[Config], origin: str = "merged config") -> Config:
    """One config doing what all `configs` do. Entries that are equal (the noop.conf every
    release snippet installs) are kept once; units of one name are joined (drop-ins
    added up); two different entries for one path, user or drop-in are refused."""
    nodes: dict[str, Directory | File | Link] = {}
    units: dict[str, Unit] = {}
    people: dict[tuple[type, str], User | Group] = {}

    def conflict(what: str) -> BakeryError:
        return BakeryError(f"{origin}: {what} is given two different ways",
                           "make the inputs agree on it, or leave it out of one")

    for config in configs:
        for node in (*config.directories, *config.files, *config.links):
            if nodes.setdefault(node.path, node) != node:
                raise conflict(node.path)
        for entry in (*config.users, *config.groups):
            if people.setdefault((type(entry), entry.name), entry) != entry:
                raise conflict(f"{type(entry).__name__.lower()} {entry.name}")
        for unit in config.units:
            have = units.setdefault(unit.name, unit)
            if have is unit:
                continue
            dropins = {d.name: d for d in have.dropins}
            for d in unit.dropins:
                if dropins.setdefault(d.name, d) != d:
                    raise conflict(f"drop-in {d.name} of {unit.name}")
            for attr in ("enabled", "contents"):
                if None not in (getattr(have, attr), getattr(unit, attr)) and \
                        getattr(have, attr) != getattr(unit, attr):
                    raise conflict(f"{attr} of {unit.name}")
            units[unit.name] = replace(
                have, enabled=have.enabled if have.enabled is not None else unit.enabled,
                contents=have.contents if have.contents is not None else unit.contents,
                dropins=tuple(dropins.values()))
    merged = Config(
        directories=tuple(n for n in nodes.values() if isinstance(n, Directory)),
        files=tuple(n for n in nodes.values() if isinstance(n, File)),
        links=tuple(n for n in nodes.values() if isinstance(n, Link)),
        units=tuple(units.values()),
        users=tuple(p for p in people.values() if isinstance(p, User)),
        groups=tuple(p for p in people.values() if isinstance(p, Group)))
    validate(merged, origin)
    return merged
