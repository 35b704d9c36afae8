"""nginx for the benches: Debian's binary with a generated config in a temp dir, in the foreground.

`Nginx(workdir, http_block, workers)` writes nginx.conf (pid, logs and temp paths inside
`workdir`), runs `nginx -p WORKDIR -e ERROR_LOG -c nginx.conf -g 'daemon off;'`, waits until every
port in `ports` accepts connections, and stops it with SIGQUIT (graceful) then SIGKILL.
The `*_server` functions return `server {}` blocks for the roles the benches need.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

#: keep-alive clients (wrk, the load generator) never see a connection closed by nginx mid-run
KEEPALIVE = "keepalive_requests 10000000; keepalive_timeout 300s;"


class Nginx:
    """One nginx master with `workers` worker processes serving `http_block`."""

    def __init__(self, workdir: Path, http_block: str, ports: list[int], workers: int = 1):
        if shutil.which("nginx") is None:
            raise RuntimeError("nginx is not installed (make bench installs it from Debian's packages)")
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        os.chmod(workdir, 0o777)  # workers run as nobody when the master is root; they write temp files here
        self.conf = workdir / "nginx.conf"
        self.error_log = workdir / "error.log"
        self.conf.write_text(f"""
worker_processes {workers};
pid {workdir}/nginx.pid;
error_log {self.error_log} warn;
events {{ worker_connections 16384; multi_accept on; }}
http {{
  access_log off;
  client_body_temp_path {workdir}/client_body;
  proxy_temp_path {workdir}/proxy_temp;
  fastcgi_temp_path {workdir}/fastcgi_temp;
  uwsgi_temp_path {workdir}/uwsgi_temp;
  scgi_temp_path {workdir}/scgi_temp;
  {KEEPALIVE}
{http_block}
}}
""")
        self.proc = subprocess.Popen(
            ["nginx", "-p", str(workdir), "-e", str(self.error_log), "-c", str(self.conf), "-g", "daemon off;"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 10
        for port in ports:
            while not _accepts(port):
                if self.proc.poll() is not None:
                    raise RuntimeError(f"nginx exited: {self.proc.stderr.read().decode(errors='replace')}"
                                       f"\n{self.error_log.read_text(errors='replace') if self.error_log.exists() else ''}")
                if time.monotonic() > deadline:
                    self.stop()
                    raise TimeoutError(f"nginx did not listen on {port}")
                time.sleep(0.02)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGQUIT)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stderr:
            self.proc.stderr.close()


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def tls_listen(port: int, tls: tuple[str, str] | None) -> str:
    """The `listen` line (and certificate) of a server block: plain, or `ssl` with (cert_file, key_file)."""
    if tls is None:
        return f"listen 127.0.0.1:{port} reuseport backlog=4096;"
    cert, key = tls
    return (f"listen 127.0.0.1:{port} ssl reuseport backlog=4096; ssl_certificate {cert}; ssl_certificate_key {key}; "
            f"ssl_protocols TLSv1.2 TLSv1.3; ssl_session_cache shared:SSL_{port}:10m;")


def static_server(port: int, body: bytes, routes: dict[str, bytes] | None = None, tls: tuple[str, str] | None = None) -> str:
    """Answers every request, any method, with `body` as JSON (the instant backend); a path in
    `routes` (exact match, any query string) gets its own body instead. `tls`: (cert, key) to serve HTTPS."""
    def answer(data: bytes) -> str:
        text = data.decode()
        if "'" in text or "\\" in text:
            raise ValueError("a static body is written inside a single-quoted nginx string")
        return (f"default_type application/json; add_header X-Elastic-Product Elasticsearch always; "
                f"return 200 '{text}';")

    exact = "".join(f"\n    location = {path} {{ {answer(data)} }}" for path, data in (routes or {}).items())
    return f"""
  server {{
    {tls_listen(port, tls)}{exact}
    location / {{ {answer(body)} }}
  }}"""


def proxy_server(
    port: int,
    upstreams: list[str],
    *,
    rate: float | None = None,
    burst: int = 0,
    conn: int | None = None,
    key: str = "$http_authorization",
    tls: tuple[str, str] | None = None,
    upstream_ca: str | None = None,
) -> str:
    """`proxy_pass` to `upstreams` (host:port) over keep-alive connections, with optional per-key
    `limit_req` (rate in requests/s, burst, nodelay) and `limit_conn`; both refuse with 429.
    `tls`: (cert, key) to listen with `ssl`; `upstream_ca`: the upstreams speak HTTPS, verified against
    this CA (`proxy_ssl_verify on`, sessions reused) — what Sluicegate's upstream.tls does."""
    zones, limits = [], []
    if rate is not None:
        zones.append(f"limit_req_zone {key} zone=perkey_req_{port}:10m rate={int(rate)}r/s;")
        limits.append(f"limit_req zone=perkey_req_{port} burst={burst} nodelay; limit_req_status 429;")
    if conn is not None:
        zones.append(f"limit_conn_zone {key} zone=perkey_conn_{port}:10m;")
        limits.append(f"limit_conn perkey_conn_{port} {conn}; limit_conn_status 429;")
    servers = " ".join(f"server {u} max_fails=0;" for u in upstreams)
    upstream_ssl = ("" if upstream_ca is None else
                    f"\n      proxy_ssl_trusted_certificate {upstream_ca}; proxy_ssl_verify on; proxy_ssl_name localhost;"
                    " proxy_ssl_server_name on; proxy_ssl_session_reuse on; proxy_ssl_protocols TLSv1.2 TLSv1.3;")
    return f"""
  {' '.join(zones)}
  upstream backend_{port} {{ {servers} keepalive 256; keepalive_requests 10000000; keepalive_timeout 300s; }}
  server {{
    {tls_listen(port, tls)}
    client_max_body_size 100m;
    location / {{
      {' '.join(limits)}
      proxy_pass {"https" if upstream_ca else "http"}://backend_{port};{upstream_ssl}
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Authorization "";
      proxy_read_timeout 120s;
    }}
  }}"""
