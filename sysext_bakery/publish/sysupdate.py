"""What a release publishes, computed from plain values: no files are read or written here.

`publish.py` gathers the inputs (provenance files, what is already published, templates)
and writes the results; everything it writes is rendered by the functions below, so the
rules of a release (names, patterns, immutability) can be read in one place.
"""
from __future__ import annotations

import hashlib
import json
import re
import string
from dataclasses import dataclass, field, fields
from pathlib import Path, PurePath
from typing import Any, Iterable, Mapping

from sysext_bakery.model import naming
from sysext_bakery.model.arch import ARCHES
from sysext_bakery.model.image import SHA256_HEX
from sysext_bakery.model.url import BaseUrl, parse_base_url
from sysext_bakery.errors import BakeryError
from sysext_bakery.inputs import brief, brief_key, decode_utf8, parse_toml, read_bounded
from sysext_bakery.build import sums
from sysext_bakery.build.provenance import revision_problem
from sysext_bakery.publish import provision
from sysext_bakery.model.reply import json_field, json_type, parse_json
from sysext_bakery.model.version import version_key, version_problem

SUMS = sums.NAME
SIGNATURE = sums.SIGNATURE
PUBLIC_KEY = "bakery-signing-key.gpg"
INDEX = "index.json"
NOOP = "noop.conf"
# index.json grows by ~400 bytes an image ever published, SHA256SUMS by ~100: 64 MiB is far
# past any real release, and bounds every read of a published metadata file (the index,
# SHA256SUMS, its signature, the keyring) wherever it comes from (a directory, a URL, GitHub)
MAX_INDEX = 64 << 20


def read_published(path: Path) -> bytes:
    """A metadata file of a published directory (index.json, SHA256SUMS, its signature, the
    keyring), read back within MAX_INDEX: it may have been damaged or replaced."""
    return read_bounded(path, str(path), f"published {path.name}", limit=MAX_INDEX)


@dataclass(frozen=True)
class ReleaseConfig:
    """release/release.toml: where the published directory is served and how hosts use it."""
    base_url: str                  # public URL of the published directory, ends with "/"
    instances_max: int = 3         # InstancesMax= of the transfer files
    github_repo: str | None = None           # owner/name for the GitHub Releases publisher
    github_metadata_tag: str = "metadata"    # the release holding aggregated SHA256SUMS + confs
    signing_key: str | None = None      # [signing] fingerprint: the key that signs SHA256SUMS
    next_signing_key: str | None = None  # [signing] next: announced for a rotation


@dataclass(frozen=True)
class PublishedImage:
    """One image as the release describes it (an entry of index.json)."""
    name: str
    version: str
    arch: str
    sha256: str
    size: int
    stream: str | None = None
    sources: tuple[tuple[str, str | None], ...] = ()   # (url, sha256): provenance
    revision: str | None = None    # bakery git commit that built it (provenance.revision_problem)
    built: str | None = None       # build time, ISO 8601 UTC
    replaces: tuple[str, ...] = ()   # OS built-in sysexts (docker-flatcar) the snippet masks
    conflicts: tuple[str, ...] = ()  # recipes whose images must not be merged beside this one

    @property
    def filename(self) -> str:
        return naming.image_filename(self.name, self.version, self.arch)


@dataclass(frozen=True)
class Rendered:
    """The text files of a release, by file name (images and SHA256SUMS are not in here)."""
    files: dict[str, str] = field(default_factory=dict)


def parse_config(text: str | bytes, origin: str) -> ReleaseConfig:
    data = parse_toml(text, origin, "fix the syntax")
    known = {"base_url", "instances_max", "github", "signing"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise BakeryError(f"{origin}: unknown key(s): {', '.join(brief_key(k) for k in unknown[:5])}",
                          f"known keys: {', '.join(sorted(known))}")
    base_url = parse_base_url(data.get("base_url"), f"{origin}: base_url")
    instances_max = data.get("instances_max", 3)
    if not isinstance(instances_max, int) or isinstance(instances_max, bool) or instances_max < 2:
        raise BakeryError(f"{origin}: instances_max: must be an integer >= 2, got {brief(instances_max)}",
                          "systemd-sysupdate keeps the current and the new instance: use 2 or more")
    github = data.get("github", {})
    if not isinstance(github, dict) or set(github) - {"repo", "metadata_tag"}:
        raise BakeryError(f"{origin}: github: expected a table with keys repo, metadata_tag",
                          'e.g. [github]\nrepo = "owner/name"')
    repo = github.get("repo")
    if repo is not None and not (isinstance(repo, str) and re.fullmatch(r"[\w.-]+/[\w.-]+", repo)):
        raise BakeryError(f"{origin}: github.repo: must be 'owner/name', got {brief(repo)}")
    tag = github.get("metadata_tag", "metadata")
    if not (isinstance(tag, str) and re.fullmatch(r"[\w.+-]{1,128}", tag)):
        raise BakeryError(f"{origin}: github.metadata_tag: must be a release tag name, got {brief(tag)}")
    signing_key, next_key = _signing(data.get("signing", {}), origin)
    return ReleaseConfig(base_url=base_url.url, instances_max=instances_max,
                         github_repo=repo,
                         github_metadata_tag=tag,
                         signing_key=signing_key, next_signing_key=next_key)


_FINGERPRINT = re.compile(r"[0-9A-Fa-f]{40}")


def _signing(table: object, origin: str) -> tuple[str | None, str | None]:
    """`[signing] fingerprint` and `next`: full 40-hex fingerprints (a short key id is
    ambiguous, and the check is only as good as the name)."""
    if not isinstance(table, dict) or set(table) - {"fingerprint", "next"}:
        raise BakeryError(f"{origin}: signing: expected a table with keys fingerprint, next",
                          '[signing]\nfingerprint = "<40 hex digits from gpg --list-secret-keys '
                          '--with-colons (fpr:)>"')
    values = {}
    for key in ("fingerprint", "next"):
        value = table.get(key)
        if value is not None and not (isinstance(value, str) and _FINGERPRINT.fullmatch(value)):
            raise BakeryError(f"{origin}: signing.{key}: must be a key's full fingerprint "
                              f"(40 hex digits, no spaces), got {brief(value)}",
                              "gpg --list-secret-keys --with-colons KEY prints it on the fpr: line")
        values[key] = value.upper() if value else None
    if values["next"] and not values["fingerprint"]:
        raise BakeryError(f"{origin}: signing.next: needs signing.fingerprint, the key hosts "
                          "trust now", "see docs/release.md, 'Rotating the signing key'")
    if values["next"] and values["next"] == values["fingerprint"]:
        raise BakeryError(f"{origin}: signing.next: is the same key as signing.fingerprint",
                          "remove next once the rotation is done")
    return values["fingerprint"], values["next"]


def parse_provenance(text: str | bytes, origin: str) -> PublishedImage:
    """A `build/state/images/<img>.json` written by the pack step."""
    hint = repack_hint(PurePath(origin).stem)
    where = f"{origin}: not a valid image provenance file"
    return _image(parse_json(_utf8(text, where, hint), where, hint), where, "the record", hint)


def _image(entry: Any, where: str, of: str, hint: str) -> PublishedImage:
    """One image record as read back (a provenance file, an index.json entry): every field
    of its type (json_field's rule); name, version, arch and sha256 as the pack step writes
    them."""
    def field(key: str, kind: type, optional: bool = False) -> Any:
        return json_field(entry, key, kind, where, hint, of, optional=optional)

    name, version, arch, sha256 = (field(k, str) for k in ("name", "version", "arch", "sha256"))
    size = field("size", int)
    sources = []
    for n, source in enumerate(field("sources", list, optional=True) or ()):
        source_of = f"{of}: sources[{n}]"
        sources.append((json_field(source, "url", str, where, hint, source_of),
                        json_field(source, "sha256", str, where, hint, source_of, optional=True)))
    stream = field("stream", str, optional=True)
    # name, version and stream make the file names read and written in the published
    # directory (a stream its transfer files, <name>-<stream>.conf, and their MatchPattern=):
    # a tampered `../x` must not reach outside it, nor a line break into a transfer file. A
    # stream is a version's prefix, spelled like a version.
    problem = (naming.name_problem(name) or version_problem(version)
               or (stream is not None and (why := version_problem(stream))
                   and f"stream {brief(stream)}: {why}")
               or (arch not in ARCHES and f"arch {brief(arch)} is not one of {', '.join(ARCHES)}")
               or (not SHA256_HEX.fullmatch(sha256)
                   and f"sha256 {brief(sha256)} is not 64 lower-case hex digits")
               or (size < 0 and f"size {size} is negative")
               or ((revision := field("revision", str, optional=True)) is not None
                   and revision_problem(revision)))
    if problem:
        raise BakeryError(f"{where}: {of}: {problem}", hint)
    return PublishedImage(
        name=name, version=version, arch=arch, sha256=sha256, size=size,
        stream=stream, sources=tuple(sources),
        revision=revision, built=field("built", str, optional=True),
        replaces=_names(entry, "replaces", where, of, hint),
        conflicts=_names(entry, "conflicts", where, of, hint))


def _names(entry: dict, key: str, where: str, of: str, hint: str) -> tuple[str, ...]:
    """A `replaces`/`conflicts` list as read back: names only, since they end up in paths."""
    names = json_field(entry, key, list, where, hint, of, optional=True) or []
    for n, value in enumerate(names):
        if not isinstance(value, str):
            raise BakeryError(f"{where}: {of}: {key!r}[{n}] is a JSON {json_type(value)}, "
                              "expected a string", hint)
        if problem := naming.name_problem(value):
            raise BakeryError(f"{where}: {of}: {key!r}[{n}]: {problem}", hint)
    return tuple(names)


def _utf8(text: str | bytes, where: str, hint: str) -> str:
    """Bytes (a download, a file read as it is) decoded here, UTF-8 only, so that bytes that
    are not are named like any other broken record instead of a UnicodeDecodeError traceback."""
    return decode_utf8(text, where, hint) if isinstance(text, bytes) else text


def repack_hint(image_id: str) -> str:
    """How to rebuild one image: `forget` first, because doit would call the pack task up to
    date when only its output was damaged."""
    return f"rebuild it: doit forget pack:{image_id} && doit pack:{image_id}"


def check_immutable(filename: str, published: str | None, new: str) -> bool:
    """True if `filename` must be copied; False if the same bytes are already published."""
    if published is None:
        return True
    if published != new:
        raise BakeryError(
            f"{filename} is already published with sha256 {published}; "
            f"the new build has sha256 {new}",
            "a published image never changes: bump the version (or remove the published "
            "file by hand if it was never served)")
    return False


def check_names(names: Iterable[str]) -> None:
    """Refuse image names whose published files would be mistaken for another's.

    systemd-sysupdate's `@v` matches any characters, `-` included, so the transfer of
    `docker` (`docker-@v-%a.raw`) also takes `docker-compose-2.0-x86-64.raw` as a docker
    version; and `noop.conf` is the file every host installs for the plain update run."""
    names = sorted(set(names))
    if NOOP.removesuffix(".conf") in names:
        raise BakeryError(f"an image named {NOOP.removesuffix('.conf')!r} would overwrite "
                          f"{NOOP}, the work-around every host installs",
                          "rename the recipe")
    for name in names:
        other = naming.clash(name, names)
        if other:
            short, long = sorted((name, other), key=len)
            raise BakeryError(
                f"images {short!r} and {long!r} cannot be published side by side: the "
                f"transfer of {short} (MatchPattern={naming.match_pattern(short)}) also matches "
                f"{long}'s images",
                naming.clash_hint(short, long) + " (see docs/release.md, 'Image names')")


def index_json(images: Iterable[PublishedImage]) -> str:
    entries = [{
        "name": i.name, "version": i.version, "arch": i.arch, "stream": i.stream,
        "file": i.filename, "sha256": i.sha256, "size": i.size,
        "sources": [{"url": url, "sha256": sha} for url, sha in i.sources],
        "revision": i.revision, "built": i.built,
        "replaces": list(i.replaces), "conflicts": list(i.conflicts),
    } for i in sorted(images, key=lambda i: (i.name, version_key(i.version), i.arch))]
    return json.dumps({"images": entries}, indent=2) + "\n"


def parse_index(text: str | bytes, origin: str) -> list[PublishedImage]:
    """index.json as `doit release` writes it, read back from a published directory, URL or
    GitHub release that may have been damaged: `{"images": [<entry>, ...]}`, each entry
    checked like a provenance record (`_image`), named by its position and name; one entry
    per image file."""
    hint = f"remove {origin}; the next publish rewrites it from the images"
    where = f"{origin}: not a bakery index.json"
    doc = parse_json(_utf8(text, where, hint), where, hint)
    entries = json_field(doc, "images", list, where, hint, "the index")
    images: dict[str, tuple[int, PublishedImage]] = {}
    for n, entry in enumerate(entries):
        image = _image(entry, where, _entry_name(n, entry), hint)
        first, seen = images.setdefault(image.filename, (n, image))
        # one file is one image: with two descriptions a reader would take whichever came
        # last (another sha256 for hosts to check, another revision to tag). The same entry
        # twice says one thing; index_json writes each file once, so a republish drops it.
        if seen != image:
            differ = [f.name for f in fields(image)
                      if getattr(seen, f.name) != getattr(image, f.name)]
            raise BakeryError(f"{where}: {_entry_name(n, entry)}: {image.filename} is also "
                              f"images[{first}], with another {', '.join(differ)}", hint)
    return [image for _, image in images.values()]


def _entry_name(n: int, entry: Any) -> str:
    name = entry.get("name") if isinstance(entry, dict) else None
    return f"images[{n}] ({brief(name)})" if isinstance(name, str) and name else f"images[{n}]"


def render_release(images: Iterable[PublishedImage], config: ReleaseConfig,
                   templates: Mapping[str, str], public_key: bytes | None) -> Rendered:
    """Transfer files, stream transfer files, Butane snippets with their Ignition form,
    noop.conf and index.json for every published image. `templates` maps template file names to their text;
    `public_key` is the key that signs SHA256SUMS, None for an unsigned release."""
    images = list(images)
    check_names(i.name for i in images)
    signed = public_key is not None
    files: dict[str, str] = {NOOP: templates["noop.conf"], INDEX: index_json(images)}
    verify = {
        "verify": "yes" if signed else "false",
        "verify_comment": ("# SHA256SUMS.gpg is checked against /etc/systemd/import-pubring.gpg"
                           if signed else
                           "# Verify=false: this release is not signed (no signing key was "
                           "configured when it was published)"),
    }
    by_name: dict[str, list[PublishedImage]] = {}
    for image in images:
        by_name.setdefault(image.name, []).append(image)
    for name, group in sorted(by_name.items()):
        streams = sorted({i.stream for i in group if i.stream})
        for stream in [None, *streams]:
            stem = f"{name}-{stream}" if stream else name
            conf = _fill(templates["transfer.conf"], "transfer.conf", name=name, conf=stem,
                         base_url=BaseUrl(config.base_url).for_unit_file,
                         pattern=naming.match_pattern(name, stream),
                         instances_max=str(config.instances_max), **verify)
            files[f"{stem}.conf"] = conf
            files[f"{stem}.transfer"] = conf
        for arch in sorted({i.arch for i in group}):
            newest = max((i for i in group if i.arch == arch), key=lambda i: version_key(i.version))
            provisioning = snippet(newest, config, files, public_key)
            files[butane_name(name, arch)] = provision.butane_yaml(
                provisioning, snippet_comment(newest, arch))
            files[ignition_name(name, arch)] = provision.ignition_json(provisioning)
    return Rendered(files)


def butane_name(name: str, arch: str) -> str:
    """`<name>.butane.yaml` for x86-64, `<name>-<arch>.butane.yaml` for the others: a URL
    keeps meaning one arch when a recipe gains or loses arches."""
    return f"{name}.butane.yaml" if arch == "x86-64" else f"{name}-{arch}.butane.yaml"


def ignition_name(name: str, arch: str) -> str:
    """The Ignition config published next to `butane_name(name, arch)`."""
    return butane_name(name, arch).removesuffix(".butane.yaml") + ".ign"


def snippet(image: PublishedImage, config: ReleaseConfig, files: Mapping[str, str],
            public_key: bytes | None, *, stream: str | None = None,
            follow: bool = True) -> provision.Config:
    """What a Flatcar host needs to run `image` and keep it current: the image, the
    `/etc/extensions` link systemd-sysext merges, the transfer file (+ noop.conf, + the
    keyring of a signed release) and the timer. Every download is pinned by its sha256,
    which Ignition checks; `files` holds the rendered transfer files and noop.conf. Each
    built-in sysext the image replaces is masked: systemd-sysext skips an image whose
    /etc/extensions entry is a link to /dev/null (overwrite: Flatcar may have linked it).

    `stream` installs the stream's transfer (`<name>-<stream>.conf`: updates within the
    stream only) instead of `<name>.conf`; `follow=False` installs no transfer at all, so the
    host keeps exactly `image` (and gets neither timer, noop.conf nor keyring for it)."""
    name, base = image.name, config.base_url
    target = f"/opt/extensions/{name}/{image.filename}"
    downloads = [provision.File(target, source=base + image.filename,
                                hash=f"sha256-{image.sha256}", mode=0o644)]
    units: tuple[provision.Unit, ...] = ()
    if follow:
        conf = f"{name}-{stream}.conf" if stream else f"{name}.conf"
        downloads += [provision.File(f"/etc/sysupdate.{name}.d/{conf}", source=base + conf,
                                     hash=f"sha256-{_sha256(files[conf].encode())}"),
                      provision.File(f"/etc/sysupdate.d/{NOOP}", source=base + NOOP,
                                     hash=f"sha256-{_sha256(files[NOOP].encode())}")]
        if public_key is not None:   # systemd-sysupdate checks SHA256SUMS.gpg with this keyring
            downloads.append(provision.File("/etc/systemd/import-pubring.gpg",
                                            source=base + PUBLIC_KEY,
                                            hash=f"sha256-{_sha256(public_key)}", mode=0o644))
        dropin = f"[Service]\nExecStartPre=/usr/lib/systemd/systemd-sysupdate -C {name} update\n"
        units = (provision.Unit("systemd-sysupdate.timer", enabled=True),
                 provision.Unit("systemd-sysupdate.service",
                                dropins=(provision.Dropin(f"{name}.conf", dropin),)))
    return provision.Config(
        # systemd-sysupdate 254 does not create its target directory
        directories=(provision.Directory(f"/opt/extensions/{name}"),),
        files=tuple(downloads),
        links=(provision.Link(f"/etc/extensions/{name}.raw", target),
               *(provision.Link(f"/etc/extensions/{builtin}.raw", "/dev/null", overwrite=True)
                 for builtin in image.replaces)),
        units=units)


def snippet_comment(image: PublishedImage, arch: str) -> str:
    return (f"Butane snippet: the {image.name} system extension ({image.filename}) on Flatcar,\n"
            "kept current by systemd-sysupdate. Copy its entries into your Butane config, or\n"
            f"list {ignition_name(image.name, arch)} (this config as Ignition JSON) under "
            "ignition.config.merge\n(see docs/release.md). Every downloaded file is checked "
            "against its sha256.")


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _fill(template: str, origin: str, **values: str) -> str:
    try:
        return string.Template(template).substitute(values)
    except (KeyError, ValueError) as e:
        raise BakeryError(f"release/templates/{origin}: unknown or malformed placeholder {e}",
                          f"placeholders available here: {', '.join('$' + k for k in sorted(values))}"
                          " (write $$ for a literal $)") from None
