"""What the doit tasks do: fetch, stage and pack one image, rewrite SHA256SUMS, print images.
Plain functions of plain values; `tasks` wraps them so a BakeryError fails the task cleanly.
The heavy modules (requests, archive readers, PySquashfsImage) are imported inside the
actions, so loading the graph (`doit list`, a no-op build) never pays for them."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from sysext_bakery.build import formats, provenance, sums, tidy
from sysext_bakery.errors import BakeryError
from sysext_bakery.files import file_digest, file_signature, write_atomic
from sysext_bakery.model.image import Image
from sysext_bakery.recipe import lock
from sysext_bakery.settings import ImagePaths, Settings


def _write_json(path: Path, value: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps(value, indent=1, sort_keys=True) + "\n")


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def fetch_image(image: Image, settings: Settings, paths: ImagePaths) -> dict[str, Any]:
    """Download every source of `image` (verified) and record what was fetched, in a file
    for the stage task and as doit values for the next up-to-date check.

    A sha256 the lock lacks stays pending in the fetch record: stage_image writes it into
    the lock once the download staged, so a truncated body or an error page is never
    pinned. Bytes that already staged (the stage record holds them) are pinned at once."""
    from sysext_bakery.build.fetch import fetch   # imported lazily: `doit list` should not pay for requests

    settings.download_cache.mkdir(parents=True, exist_ok=True)
    unpinned = [s.url for s in image.sources if s.sha256 is None]
    if settings.locked and unpinned:
        raise BakeryError(
            f"{image.id}: BAKERY_LOCKED=1 and {len(unpinned)} source(s) have no sha256 pinned in "
            f"{lock_name(settings)}: {', '.join(unpinned)}",
            f"pin them with `doit update:{image.name}` (review and commit the lock), then build "
            "again; locked builds never trust a download on first use")
    fetched, first_use, seen = [], [], {}
    for source in image.sources:
        got = fetch(source.url, source.sha256, settings.download_cache,
                    checksum_url=source.checksum_url, checksum=source.checksum,
                    signature_url=source.signature_url, signature_key=source.signature_key,
                    mirror=settings.mirror, locked=settings.locked)
        if got.first_use:
            first_use.append(source.url)
        fetched.append({"url": source.url, "sha256": got.sha256})
        seen[got.sha256] = list(got.signature) if got.signature else None
    pending = any(s.sha256 is None for s in image.sources)
    staged = _read_json(Path(paths.stage_record))
    if pending and isinstance(staged, dict) and staged.get("sources") == fetched:
        _pin(image, settings, fetched, first_use)
        pending, first_use = False, []
    _write_json(Path(paths.fetch_record),
                {"sources": fetched, "pending": pending, "first_use": first_use,
                 "verified": {"run": tidy.run_id(), "files": seen}})
    return {"sources": fetched, "pending": pending}


def _pin(image: Image, settings: Settings, fetched: list[dict[str, str]],
         first_use: list[str]) -> None:
    for source in fetched:
        if source["url"] in first_use:
            print(f"WARNING: trust on first use: {source['url']} has no pinned sha256 and no "
                  f"upstream checksum; it staged, so its sha256 {source['sha256']} is now "
                  f"recorded in {settings.lock_path}. Review it (git diff) before you commit.",
                  file=sys.stderr)
    lock.record_sha256(settings.lock_path, image.name, image.version, image.arch, fetched)


def _signature(path: Path) -> list[int] | None:
    """files.file_signature of `path` as the fetch record holds it (a JSON list); None when
    there is no file."""
    try:
        return list(file_signature(path.stat()))
    except OSError:
        return None


def lock_name(settings: Settings) -> str:
    try:
        return str(settings.lock_path.relative_to(settings.root))
    except ValueError:
        return str(settings.lock_path)


def files_digest(files_dir: Path | None) -> dict[str, str]:
    """Content of files/ as recorded in the stage record: sha256 and exec bit per file, the
    target per symlink."""
    digest = {}
    for path in sorted(files_dir.rglob("*")) if files_dir else ():
        rel = str(path.relative_to(files_dir))
        if path.is_symlink():
            digest[rel] = f"-> {os.readlink(path)}"
        elif path.is_file():
            digest[rel] = f"{file_digest(path)} {'x' if path.stat().st_mode & 0o111 else '-'}"
    return digest


def stage_config(image: Image) -> dict[str, Any]:
    """What shapes the staged tree besides the downloads' bytes and the static files. It goes
    into the stage record, pack's only dependency, so a tree that changed is repacked."""
    return {"format": formats.STAGE_FORMAT, "name": image.name, "version": image.version,
            "arch": image.arch,
            "sources": [{"url": s.url, "kind": s.kind, "allow_setuid": s.allow_setuid,
                         "install": [[i.pattern, i.dest, i.mode] for i in s.install]}
                        for s in image.sources],
            "files": str(image.files_dir) if image.files_dir else None,
            "upholds": image.upholds, "reload_manager": image.reload_manager,
            "os": [image.os_id, image.sysext_level]}


def stage_image(image: Image, settings: Settings, paths: ImagePaths) -> None:
    """Stage and validate the image tree, then record a digest of everything that shaped it."""
    from sysext_bakery.build import stage
    from sysext_bakery.build.fetch import fetch

    record = _read_json(Path(paths.fetch_record))
    fetched = record["sources"]
    # The fetch task may be up to date while a download rotted (or was swapped) in the
    # shared cache since: each one is hashed again here, and fetched again if it changed.
    # Unless this very run's fetch hashed it and the file is untouched since (same inode,
    # size, mtime and ctime: a rewrite, rename or chmod changes one of them).
    verified = record.get("verified") or {}
    fresh = verified.get("run") is not None and verified.get("run") == tidy.run_id()
    signed = verified.get("files") or {}
    downloads = []
    for s in fetched:
        path = settings.download_cache / s["sha256"]
        signature = _signature(path)   # None (no file) proves nothing untouched
        if fresh and signature is not None and signature == signed.get(s["sha256"]):
            downloads.append(path)
        else:
            downloads.append(fetch(s["url"], s["sha256"], settings.download_cache,
                                   mirror=settings.mirror).path)
    stage.stage_image(image, downloads, Path(paths.tree), unpacked=settings.build / "stage" / ".unpacked")
    _write_json(Path(paths.stage_record), {"config": stage_config(image), "sources": fetched,
                                           "files": files_digest(image.files_dir)})
    if record.get("pending"):   # trust on first use: only what unpacked and validated
        _pin(image, settings, fetched, record.get("first_use", []))


def pack_image(image: Image, settings: Settings, paths: ImagePaths, stream: str | None) -> None:
    """Pack the staged tree, check it by reading it back, record provenance and SHA256SUMS."""
    from sysext_bakery.build.pack import pack

    out = Path(paths.image)
    out.parent.mkdir(parents=True, exist_ok=True)
    digest = pack(Path(paths.tree), out, image.fmt, image.compression)
    staged = _read_json(Path(paths.stage_record))
    provenance.write(Path(paths.provenance), provenance.record(
        image, out, digest, staged["sources"], stream, provenance.git_revision(settings.root)))
    sums.update(out.parent, {out.name: digest})


def write_sums(settings: Settings) -> None:
    """Rewrite build/images/SHA256SUMS for every image present, hashing only images whose
    provenance record does not match their size and mtime (replaced by hand, or a crash
    between placing the image and writing its record)."""
    settings.images.mkdir(parents=True, exist_ok=True)
    entries = {}
    with sums.locked(settings.images):   # a pack task of a concurrent -n N run sets lines too
        for image in sorted(settings.images.glob("*.raw")):
            record = provenance.read(Path(ImagePaths.of(settings, image.stem).provenance)) or {}
            st = image.stat()
            same = (record.get("file"), record.get("size"), record.get("mtime_ns")) == \
                (image.name, st.st_size, st.st_mtime_ns)
            entries[image.name] = record["sha256"] if same else file_digest(image)
        changed = write_atomic(settings.images / sums.NAME, sums.render(entries))
    print(f"{settings.images / sums.NAME}: {len(entries)} images, {'updated' if changed else 'unchanged'}")


def print_images(settings: Settings, names: list[str]) -> None:
    """`doit inspect docker-24.0.9-x86-64 …`: an image id (from build/images) or a file."""
    from sysext_bakery.build.inspect import format_image

    if not names:
        raise BakeryError("doit inspect: name an image", "e.g. doit inspect docker-24.0.9-x86-64")
    for name in names:
        path = Path(name) if name.endswith(".raw") else settings.images / f"{name}.raw"
        if not path.exists():
            raise BakeryError(f"{path}: no such image", f"build it first: doit pack:{path.stem}")
        print(format_image(path))


def fail_with(message: str) -> None:
    raise BakeryError(message)
