"""Upstream-shaped files for the tests, laid out as a BAKERY_MIRROR tree (`<root>/HOST/PATH`),
and a loopback HTTP server that serves such a tree and remembers what was asked of it."""
from __future__ import annotations

import gzip
import hashlib
import io
import json
import lzma
import tarfile
import threading
import time
from dataclasses import dataclass, field
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote

from elf import make_elf

RATE_CHUNK = 64 * 1024   # bytes a rate-limited answer sends between pauses

DOCKER_BINARIES = ("docker", "dockerd", "containerd", "containerd-shim-runc-v2", "ctr", "runc",
                   "docker-init", "docker-proxy")
DOCKER_ARCH = {"x86-64": "x86_64", "arm64": "aarch64"}
GO_ARCH = {"x86-64": "amd64", "arm64": "arm64"}


def tar_bytes(members: list[tuple[str, bytes | None, int]], compress: str = "gz",
              links: list[tuple[str, str, bytes]] = ()) -> bytes:
    """A tarball of (name, content or None for a directory, mode) plus (name, target, type)
    links, deterministic (fixed mtimes, no owner names)."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name, content, mode in members:
            info = tarfile.TarInfo(name)
            info.mode, info.mtime = mode, 1700000000
            if content is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            else:
                info.size = len(content)
                tar.addfile(info, io.BytesIO(content))
        for name, target, kind in links:
            info = tarfile.TarInfo(name)
            info.type, info.linkname, info.mtime = kind, target, 1700000000
            tar.addfile(info)
    data = raw.getvalue()
    if compress == "gz":
        return gzip.compress(data, mtime=0)
    if compress == "xz":
        return lzma.compress(data)
    return data


def docker_tgz(arch: str, version: str, binary_arch: str | None = None) -> bytes:
    """Shaped like download.docker.com's static tarball: a docker/ dir of executables."""
    members: list[tuple[str, bytes | None, int]] = [("docker/", None, 0o755)]
    for b in DOCKER_BINARIES:
        members.append((f"docker/{b}", make_elf(binary_arch or arch, f"{b} {version}\n".encode() * 64), 0o755))
    return tar_bytes(members)


@dataclass
class Upstream:
    """The generated tree and the sha256 of every file in it, by upstream URL."""
    root: Path
    sha256: dict[str, str] = field(default_factory=dict)

    def add(self, url: str, content: bytes) -> str:
        assert url.startswith("https://")
        path = self.root / url[len("https://"):]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        self.sha256[url] = hashlib.sha256(content).hexdigest()
        return self.sha256[url]


def docker_url(arch: str, version: str) -> str:
    return f"https://download.docker.com/linux/static/stable/{DOCKER_ARCH[arch]}/docker-{version}.tgz"


def containerd_url(arch: str, version: str) -> str:
    return (f"https://github.com/containerd/containerd/releases/download/v{version}/"
            f"containerd-static-{version}-linux-{GO_ARCH[arch]}.tar.gz")


def runc_url(arch: str, version: str = "1.2.5") -> str:
    return f"https://github.com/opencontainers/runc/releases/download/v{version}/runc.{GO_ARCH[arch]}"


def wasmtime_url(arch: str, version: str) -> str:
    uname = DOCKER_ARCH[arch]
    return (f"https://github.com/bytecodealliance/wasmtime/releases/download/v{version}/"
            f"wasmtime-v{version}-{uname}-linux.tar.xz")


def populate(root: Path) -> Upstream:
    """Every upstream file the test lock pins, for both arches."""
    up = Upstream(root)
    runc_sums = []
    for arch in ("x86-64", "arm64"):
        for version in ("24.0.8", "24.0.9", "25.0.0"):
            up.add(docker_url(arch, version), docker_tgz(arch, version))
        for version in ("1.7.27",):
            url = containerd_url(arch, version)
            digest = up.add(url, tar_bytes([
                ("bin/", None, 0o755),
                *((f"bin/{b}", make_elf(arch, b.encode() * 50), 0o755)
                  for b in ("containerd", "ctr", "containerd-shim-runc-v2"))]))
            up.add(url + ".sha256sum", f"{digest}  {url.rsplit('/', 1)[1]}\n".encode())
        digest = up.add(runc_url(arch), make_elf(arch, b"runc" * 100))
        runc_sums.append(f"{digest}  runc.{GO_ARCH[arch]}\n")
        version = "29.0.1"
        top = f"wasmtime-v{version}-{DOCKER_ARCH[arch]}-linux"
        up.add(wasmtime_url(arch, version), tar_bytes([
            (f"{top}/", None, 0o755), (f"{top}/wasmtime", make_elf(arch, b"wasm" * 100), 0o755),
            (f"{top}/LICENSE", b"Apache-2.0\n", 0o644), (f"{top}/README.md", b"readme\n", 0o644)],
            compress="xz"))
    up.add(runc_url("x86-64").rsplit("/", 1)[0] + "/runc.sha256sum", "".join(runc_sums).encode())
    return up


class _Server(ThreadingHTTPServer):
    # socketserver's default listen backlog is 5: more concurrent connects than that (doit
    # update discovers 8 at a time) get their SYN dropped and retried after a second
    request_queue_size = 128
    daemon_threads = True


class MirrorServer:
    """Serves a directory on 127.0.0.1 and records each requested path. `failures` maps a
    path (without the query) to the HTTP status it answers instead, for an upstream that fails.
    A request with a query is answered from the file named by path and query, if there is one
    (recorded API answers, tests/recorded.py). `delay` holds every answer that many seconds (a
    slow link, so concurrent builds overlap); while `gate` is cleared, answers wait for it (at
    most 60 s), and a GET of a path (without the query) in `holds` waits for its own event
    the same way, to keep one download in flight. `rate` (bytes/s, per connection) sends file
    bodies no faster, the way an upstream CDN serves one download."""

    def __init__(self, directory: Path, delay: float = 0.0, rate: float | None = None):
        requests: list[str] = []
        failures: dict[str, int] = {}
        gate = threading.Event()
        gate.set()
        holds: dict[str, threading.Event] = {}

        class Handler(SimpleHTTPRequestHandler):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, directory=str(directory), **kwargs)

            def do_GET(self):
                requests.append(self.path)
                gate.wait(60)
                if (hold := holds.get(self.path.split("?", 1)[0])) is not None:
                    hold.wait(60)
                if delay:
                    time.sleep(delay)
                if (status := failures.get(self.path.split("?", 1)[0])) is not None:
                    self.send_error(status)
                    return
                if not self.recorded():
                    super().do_GET()

            def recorded(self) -> bool:
                """A recorded answer (tests/recorded.py): the file named by the unquoted
                path and query, sent with the headers of its .headers.json."""
                target = unquote(self.path).lstrip("/")
                path = (directory / target).resolve()
                sidecar = path.with_name(path.name + ".headers.json")
                if (not path.is_relative_to(directory.resolve()) or not path.is_file()
                        or ("?" not in target and not sidecar.is_file())):
                    return False
                body = path.read_bytes()
                headers = json.loads(sidecar.read_text()) if sidecar.is_file() else {}
                self.send_response(200)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                return True

            def copyfile(self, source, outputfile):
                if rate is None:
                    return super().copyfile(source, outputfile)
                start, sent = time.monotonic(), 0
                while chunk := source.read(RATE_CHUNK):
                    outputfile.write(chunk)
                    sent += len(chunk)
                    ahead = sent / rate - (time.monotonic() - start)
                    if ahead > 0:
                        time.sleep(ahead)

            def log_message(self, *args):
                pass

        self.requests = requests
        self.failures = failures
        self.gate = gate
        self.holds = holds
        self.server = _Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
