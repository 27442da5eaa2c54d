"""nginx as the static artifact host of the tests and the fleet benchmark.

The sync service publishes large payloads into a folder (``sync.bulk``); any static
server can serve it, and nginx is the one most fleets would put there (or in front of a
CDN). ``NginxHost`` runs the Debian package's binary with a config of its own — one TLS
server on a loopback port, the folder as its root, Range requests on (nginx's default
for static files), an access log that records each request's Range header and the
bytes sent — so a test can see exactly what was fetched.
"""

from __future__ import annotations

import os
import shutil
import socket
from dataclasses import dataclass
from pathlib import Path

from edgeserve.polling import wait_until
from edgeserve.processes import ChildProcess, free_port

_SBIN_DIRS = (Path("/usr/sbin"), Path("/usr/local/sbin"))
LOG_FORMAT = '$request_method $uri "$http_range" $status $body_bytes_sent'


def find_nginx() -> Path | None:
    """The ``nginx`` executable, or None when it is not installed."""
    found = shutil.which("nginx")
    if found:
        return Path(found)
    for directory in _SBIN_DIRS:
        if (directory / "nginx").is_file():
            return directory / "nginx"
    return None


@dataclass(frozen=True)
class AccessRecord:
    """One line of the access log."""

    method: str
    path: str
    range: str
    status: int
    bytes_sent: int


class NginxHost:
    """nginx serving ``root`` over HTTPS at ``https://127.0.0.1:<port>/`` (``cert``/``key``).

    ``limit_rate`` (bytes/s per connection) slows transfers down, so that a test can cut
    one mid-way.
    """

    def __init__(
        self,
        workdir: Path,
        root: Path,
        cert: Path,
        key: Path,
        port: int | None = None,
        limit_rate: int | None = None,
    ) -> None:
        executable = find_nginx()
        if executable is None:
            raise FileNotFoundError("nginx is not installed (apt-get install nginx-light)")
        self.workdir = workdir
        self.root = root
        self.port = port or free_port()
        self.access_log = workdir / "access.log"
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "temp").mkdir(exist_ok=True)
        self.config = workdir / "nginx.conf"
        self.config.write_text(self._config(cert, key, limit_rate))
        self.process = ChildProcess(
            [str(executable), "-p", str(workdir), "-c", str(self.config), "-g", "daemon off;"],
            log_file=workdir / "nginx.out",
        )

    @property
    def base_url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def start(self, timeout: float = 15.0) -> NginxHost:
        self.process._spawn()
        wait_until(self._listening, timeout, f"nginx listening on {self.port}")
        return self

    def stop(self) -> int:
        return self.process.stop()

    def records(self) -> list[AccessRecord]:
        """The access log so far (nginx writes each line when its request ends)."""
        if not self.access_log.is_file():
            return []
        rows = []
        for line in self.access_log.read_text().splitlines():
            method, path, rest = line.split(" ", 2)
            quoted, status, sent = rest.rsplit(" ", 2)
            rows.append(AccessRecord(method, path, quoted.strip('"'), int(status), int(sent)))
        return rows

    def __enter__(self) -> NginxHost:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _listening(self) -> bool:
        if not self.process.running:
            log = self.workdir / "nginx.out"
            raise RuntimeError(f"nginx exited: {log.read_text()[-2000:] if log.exists() else ''}")
        with socket.socket() as probe:
            return probe.connect_ex(("127.0.0.1", self.port)) == 0

    def _config(self, cert: Path, key: Path, limit_rate: int | None) -> str:
        temp = self.workdir / "temp"
        # As root, nginx's workers would drop to "nobody", which cannot read a test's
        # private temporary folders; keep them as the user who started it.
        user = "user root;\n" if os.geteuid() == 0 else ""
        rate = f"        limit_rate {limit_rate};\n" if limit_rate else ""
        return f"""{user}worker_processes 1;
pid {self.workdir / "nginx.pid"};
error_log {self.workdir / "error.log"} warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    log_format ranges '{LOG_FORMAT}';
    client_body_temp_path {temp}/body;
    proxy_temp_path {temp}/proxy;
    fastcgi_temp_path {temp}/fastcgi;
    uwsgi_temp_path {temp}/uwsgi;
    scgi_temp_path {temp}/scgi;
    types {{ }}
    default_type application/octet-stream;
    server {{
        listen 127.0.0.1:{self.port} ssl;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        root {self.root};
        access_log {self.access_log} ranges;
{rate}    }}
}}
"""
