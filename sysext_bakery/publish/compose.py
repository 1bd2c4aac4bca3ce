"""`bakery compose EXT... --from DIR|URL`: one host's exact set of system extensions, as one
Butane config and the Ignition JSON it stands for.

Each release snippet (`sysupdate.snippet`) describes one extension; composing joins the
snippets of the chosen images with `provision.merge`, so what they share (noop.conf, the
keyring, systemd-sysupdate.timer) is there once, and adds the one reboot signal. What is
chosen is read from the published directory: its index.json (names, versions, streams,
arches, `replaces`, `conflicts`), SHA256SUMS (the hashes hosts check), the transfer files
and the signing key (pinned by the sha256 of the bytes published).

EXT is `name` (newest version, follows `<name>.conf`), `name-stream` (newest of the stream,
follows `<name>-<stream>.conf`) or `name-version` (that image, no transfer: the host keeps
it until its config changes). A version is taken before a stream of the same spelling, as
`doit build:` does.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from sysext_bakery.build import sums as sums_file
from sysext_bakery.errors import BakeryError
from sysext_bakery.files import write_atomic
from sysext_bakery.model.arch import ARCHES
from sysext_bakery.model.url import parse_base_url
from sysext_bakery.model.version import version_key
from sysext_bakery.publish import provision
from sysext_bakery.publish import sysupdate
from sysext_bakery.publish.sysupdate import NOOP, PublishedImage

BUTANE = "config.butane.yaml"
IGNITION = "config.ign"
# The refresh after an update: the reboot-required signal kured reads. systemd-sysext.service
# records which images it merged; after each sysupdate run, links that differ from that
# record mean a new image waits for a reboot. A live `systemd-sysext refresh` was not chosen:
# it swaps /usr under running dockerd, containerd or kubelet without restarting them.
MERGED_RECORD = "/run/sysext-bakery/merged"
REBOOT_SENTINEL = "/run/reboot-required"
_LIST_LINKS = "ls -ln --time-style=+ /etc/extensions/"
REFRESH_DROPIN = "sysext-bakery-reboot-required.conf"
RECORD_MERGED = (f"[Service]\nExecStartPost=/bin/sh -c 'mkdir -p {MERGED_RECORD.rsplit('/', 1)[0]}"
                 f" && {_LIST_LINKS} > {MERGED_RECORD}'\n")
SIGNAL_REBOOT = (f"[Service]\nExecStartPost=/bin/sh -c 'if [ -e {MERGED_RECORD} ] && ! "
                 f"{_LIST_LINKS} | cmp -s - {MERGED_RECORD}; then touch {REBOOT_SENTINEL}; fi'\n")

Read = Callable[[str, bool], "bytes | None"]   # (file name, required) -> bytes; None if absent


@dataclass(frozen=True)
class Choice:
    """One EXT argument, resolved to a published image."""
    asked: str
    image: PublishedImage
    stream: str | None       # the stream transfer to follow
    follow: bool             # False: an exact version, no transfer

    @property
    def transfer(self) -> str | None:
        if not self.follow:
            return None
        return f"{self.image.name}-{self.stream}.conf" if self.stream else f"{self.image.name}.conf"


# ---- reading the published directory -------------------------------------------------------

def reader(where: str) -> Read:
    """A reader of the published directory `where` (a path, or its http(s) URL)."""
    if where.startswith(("http://", "https://")):
        base = where if where.endswith("/") else where + "/"
        return lambda name, required: _get(base + name, required)

    directory = Path(where)
    if not directory.is_dir():
        raise BakeryError(f"--from {where}: not a directory",
                          "give the directory `doit release` published into, or its URL")

    def read(name: str, required: bool) -> bytes | None:
        path = directory / name
        if not path.exists():
            if required:
                raise BakeryError(f"{path}: missing", "is this a directory published by "
                                  "`doit release`? (it holds index.json and SHA256SUMS)")
            return None
        return sysupdate.read_published(path)
    return read


def _get(url: str, required: bool) -> bytes | None:
    # the one network call of compose: a published directory is not upstream (no mirror,
    # http allowed: a signed release may be served over plain http)
    from sysext_bakery.http import Http

    with Http(upstream=False, hint="check --from: the URL the release is served at") as http:
        reply = http.get(url, max_bytes=sysupdate.MAX_INDEX)
        if reply.status == 404 and not required:
            return None
        http.check(reply, url)
        return reply.body


def load_published(read: Read, origin: str) -> list[PublishedImage]:
    """The images of index.json that SHA256SUMS lists, with SHA256SUMS's hash (hosts check
    that one); an index entry with another hash means the directory is inconsistent."""
    index = sysupdate.parse_index(_text(read(sysupdate.INDEX, True), sysupdate.INDEX, origin),
                                  f"{origin}/{sysupdate.INDEX}")
    manifest = sums_file.parse(_text(read(sysupdate.SUMS, True), sysupdate.SUMS, origin),
                               f"{origin}/{sysupdate.SUMS}")
    for image in index:
        if image.filename in manifest and manifest[image.filename] != image.sha256:
            raise BakeryError(f"{origin}: {image.filename} has sha256 {manifest[image.filename]} "
                              f"in {sysupdate.SUMS} but {image.sha256} in {sysupdate.INDEX}",
                              "the directory is inconsistent: publish it again with `doit release`")
    return [i for i in index if i.filename in manifest]


def _text(data: bytes | None, name: str, origin: str) -> str:
    assert data is not None
    try:
        return data.decode()
    except UnicodeDecodeError:
        raise BakeryError(f"{origin}/{name}: not UTF-8 text",
                          "is this a directory published by `doit release`?") from None


def transfer_facts(text: str, origin: str) -> tuple[str, bool]:
    """(base URL of [Source] Path=, Verify=) of a published transfer file."""
    section, values = "", {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
        elif "=" in line:
            key, _, value = line.partition("=")
            values[(section, key.strip())] = value.strip()
    path, verify = values.get(("Source", "Path")), values.get(("Transfer", "Verify"), "no")
    if path is None:
        raise BakeryError(f"{origin}: no [Source] Path=", "publish the directory again")
    # the transfer file escapes % as %% (a specifier otherwise)
    base = parse_base_url(path.replace("%%", "%"), f"{origin}: [Source] Path=").url
    return base, verify.lower() in ("yes", "true", "1", "on")


# ---- choosing ------------------------------------------------------------------------------

def choose(asked: Sequence[str], images: Sequence[PublishedImage], arch: str,
           origin: str) -> list[Choice]:
    """Resolve every EXT to one published image for `arch`; refuse unknown names, versions,
    streams and arches, a name asked twice, and extensions that declare a conflict."""
    if not asked:
        raise BakeryError("no extension asked for", "e.g. bakery compose docker-27 --from DIR")
    by_name: dict[str, list[PublishedImage]] = {}
    for image in images:
        by_name.setdefault(image.name, []).append(image)
    if by_name and not any(i.arch == arch for i in images):
        raise BakeryError(f"{origin}: nothing is published for {arch}",
                          f"published arches: {', '.join(sorted({i.arch for i in images}))}")
    chosen: list[Choice] = []
    for text in asked:
        name, rest = _split(text, by_name, origin)
        group = by_name[name]
        if not any(i.arch == arch for i in group):
            raise BakeryError(f"{text}: {name} is not published for {arch} in {origin}",
                              f"its arches: {', '.join(sorted({i.arch for i in group}))}")
        stream, follow, pool = _pool(text, name, rest, group, origin)
        for_arch = [i for i in pool if i.arch == arch]
        if not for_arch:
            raise BakeryError(f"{text}: not published for {arch} in {origin}",
                              f"{text} is published for {', '.join(sorted({i.arch for i in pool}))}")
        newest = max(for_arch, key=lambda i: version_key(i.version))
        twice = next((c for c in chosen if c.image.name == name), None)
        if twice:
            raise BakeryError(f"{name} is asked for twice ({twice.asked} and {text})",
                              "a host merges one image of each extension: keep one of them")
        chosen.append(Choice(text, newest, stream, follow))
    _check_conflicts(chosen)
    return chosen


def _split(text: str, by_name: dict[str, list[PublishedImage]], origin: str) -> tuple[str, str | None]:
    if text in by_name:
        return text, None
    # the publisher refuses names that are another's followed by '-', so one prefix matches
    name = next((n for n in sorted(by_name) if text.startswith(n + "-")), None)
    if name is None:
        raise BakeryError(f"{text}: no extension of that name is published in {origin}",
                          f"published: {', '.join(sorted(by_name)) or 'nothing'}")
    return name, text[len(name) + 1:]


def _pool(text: str, name: str, rest: str | None, group: list[PublishedImage],
          origin: str) -> tuple[str | None, bool, list[PublishedImage]]:
    """(stream to follow, whether to follow, the images `text` may mean)."""
    if rest is None:
        return None, True, group
    exact = [i for i in group if i.version == rest]
    if exact:
        return None, False, exact
    streamed = [i for i in group if i.stream == rest]
    if streamed:
        return rest, True, streamed
    versions = sorted({i.version for i in group}, key=version_key)
    streams = sorted({i.stream for i in group if i.stream}, key=version_key)
    raise BakeryError(f"{text}: {name} has no published version or stream {rest!r} in {origin}",
                      f"published streams: {', '.join(streams) or 'none'}; "
                      f"versions: {', '.join(versions)}")


def _check_conflicts(chosen: list[Choice]) -> None:
    # `conflicts` is all compose can see: index.json carries no path lists. Overlapping paths
    # are caught at build time (`doit overlaps` fails unless the recipes declare them here).
    for i, a in enumerate(chosen):
        for b in chosen[i + 1:]:
            x, y = a.image, b.image
            if y.name in x.conflicts or x.name in y.conflicts:
                declarer = x.name if y.name in x.conflicts else y.name
                raise BakeryError(
                    f"{a.asked} and {b.asked} conflict: {declarer}'s recipe declares it "
                    "(their images ship some of the same files)",
                    f"choose one of {x.name} and {y.name}")


# ---- composing -----------------------------------------------------------------------------

def compose(chosen: Sequence[Choice], read: Read, origin: str) -> tuple[provision.Config, str]:
    """The provisioning model of `chosen` and the base URL its downloads come from."""
    files: dict[str, str] = {}
    bases: dict[str, str] = {}
    verify = False
    for c in chosen:
        name = c.transfer or f"{c.image.name}.conf"     # a pinned image's only gives the URL
        text = _text(read(name, True), name, origin)
        base, verifies = transfer_facts(text, f"{origin}/{name}")
        bases[name] = base
        if c.follow:
            files[name] = text
            verify = verify or verifies
    if len(set(bases.values())) > 1:
        raise BakeryError(f"{origin}: the transfer files point at different URLs: "
                          + ", ".join(f"{n} -> {b}" for n, b in sorted(bases.items())),
                          "publish the directory again with one base_url")
    base = next(iter(bases.values()))
    public_key = _public_key(read, origin) if verify else None
    if any(c.follow for c in chosen):
        files[NOOP] = _text(read(NOOP, True), NOOP, origin)
    config = sysupdate.ReleaseConfig(base_url=base)
    parts = [sysupdate.snippet(c.image, config, files, public_key, stream=c.stream,
                               follow=c.follow) for c in chosen]
    if any(c.follow for c in chosen):
        parts.append(reboot_signal())
    return provision.merge(parts, "composed config"), base


def _public_key(read: Read, origin: str) -> bytes:
    """The published keyring, after checking it verifies the published SHA256SUMS: a host
    given a key that does not would install no update ever."""
    from sysext_bakery.publish.sign import signature_valid

    key = read(sysupdate.PUBLIC_KEY, False)
    signature = read(sysupdate.SIGNATURE, False)
    if key is None or signature is None:
        raise BakeryError(f"{origin}: the transfer files say Verify=yes but "
                          f"{sysupdate.PUBLIC_KEY} or {sysupdate.SIGNATURE} is not published",
                          "publish the directory again with its signing key")
    manifest = read(sysupdate.SUMS, True)
    assert manifest is not None
    if not signature_valid(manifest, signature, key):
        raise BakeryError(f"{origin}: {sysupdate.SIGNATURE} does not verify {sysupdate.SUMS} "
                          f"with {sysupdate.PUBLIC_KEY}: hosts would refuse every update",
                          "publish the directory again (doit release), then compose")
    return key


def reboot_signal() -> provision.Config:
    """Touch /run/reboot-required (what kured watches) when sysupdate moved a link in
    /etc/extensions away from what systemd-sysext merged."""
    return provision.Config(units=(
        provision.Unit("systemd-sysext.service",
                       dropins=(provision.Dropin(REFRESH_DROPIN, RECORD_MERGED),)),
        provision.Unit("systemd-sysupdate.service",
                       dropins=(provision.Dropin(REFRESH_DROPIN, SIGNAL_REBOOT),))))


def comment(chosen: Sequence[Choice], arch: str, origin: str) -> str:
    lines = [f"Composed by `bakery compose {' '.join(c.asked for c in chosen)} --arch {arch}` "
             f"from {origin}:"]
    for c in chosen:
        how = (f"follows {c.transfer}" if c.follow
               else "pinned: no transfer, stays at this version")
        lines.append(f"  {c.image.filename} ({how})")
    if any(c.follow for c in chosen):
        lines.append(f"After an update, {REBOOT_SENTINEL} asks for the reboot that merges the new "
                     "image (kured reads it; see docs/provisioning.md).")
    return "\n".join(lines)


# ---- the command ---------------------------------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("extensions", nargs="+", metavar="EXT",
                        help="name (newest, follows every version), name-stream (newest of the "
                             "stream, follows it) or name-version (that image, pinned)")
    parser.add_argument("--from", dest="source", required=True, metavar="DIR|URL",
                        help="the published directory (doit release --dest) or its URL")
    parser.add_argument("--arch", default="x86-64", choices=tuple(ARCHES),
                        help="the host's architecture (default: x86-64)")
    parser.add_argument("--out", type=Path, default=Path("."),
                        help=f"where {BUTANE} and {IGNITION} go (default: .)")


def run(args: argparse.Namespace) -> None:
    origin = args.source.rstrip("/") or args.source
    read = reader(args.source)
    chosen = choose(args.extensions, load_published(read, origin), args.arch, origin)
    config, base = compose(chosen, read, origin)
    if args.source.startswith(("http://", "https://")) and base != origin + "/":
        print(f"note: {origin} was published for {base}: the config points hosts there",
              file=sys.stderr)
    butane = provision.butane_yaml(config, comment(chosen, args.arch, origin))
    ignition = provision.ignition_json(config)
    for name, text in ((BUTANE, butane), (IGNITION, ignition)):
        write_atomic(args.out / name, text)
        print(args.out / name)
