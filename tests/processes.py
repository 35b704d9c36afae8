"""Real processes for tests: redis-server, the simulated cluster, the proxy.

Each is started on free ports, waited for until it answers, and stopped by the `Processes`
owner that started it (one finalizer closes everything, like aiohttp's server factories).
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import yaml

from proxy.config import hash_secret

REPO = Path(__file__).resolve().parent.parent
PY = sys.executable


#: ports this test process has handed out: the kernel may give a just-closed ephemeral port again, and two
#: calls for one config (listen and admin_listen) once returned the same port
_handed_out: set[int] = set()


def free_port() -> int:
    """A loopback port free now and never returned before by this process."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _handed_out:
            _handed_out.add(port)
            return port


def wait_until(predicate, timeout: float = 15.0, what: str = "condition", interval: float = 0.02):
    """Poll `predicate` until it returns a truthy value; for readiness of another process only."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def http_get(url: str, timeout: float = 2.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except (urllib.error.URLError, ConnectionError, OSError, TimeoutError):
        return 0, b""


def http_post(url: str, data: bytes = b"", timeout: float = 5.0) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=data, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


class RedisServer:
    """A real redis-server on a free port; can be killed (-9) and restarted on the same port."""

    def __init__(self, workdir: Path, port: int | None = None, extra: list[str] | None = None):
        if shutil.which("redis-server") is None:
            raise RuntimeError("redis-server is not installed (make test installs it)")
        self.port = port or free_port()
        self.workdir = workdir
        self.extra = extra or []
        self.proc: subprocess.Popen | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.workdir), "--protected-mode", "no", *self.extra],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        wait_until(self.ping, what=f"redis-server on {self.port}")

    def ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        self.kill()


def cluster_ports(count: int) -> list[int]:
    """Free ports p whose cluster bus port p + 10000 is free too."""
    ports: list[int] = []
    while len(ports) < count:
        port = free_port()
        if port + 10000 > 65535 or port in ports:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        ports.append(port)
    return ports


class RedisCluster:
    """A real Redis Cluster: `masters` redis-server processes in cluster mode on free ports, no
    replicas, joined by `redis-cli --cluster create`, waited for until every node says cluster_state:ok."""

    def __init__(self, workdir: Path, masters: int = 3):
        if shutil.which("redis-cli") is None:
            raise RuntimeError("redis-cli is not installed (make test installs it)")
        self.servers: list[RedisServer] = []
        try:
            for port in cluster_ports(masters):
                node_dir = workdir / f"node-{port}"
                self.servers.append(RedisServer(node_dir, port=port, extra=[
                    "--cluster-enabled", "yes", "--cluster-config-file", str(node_dir / f"nodes-{port}.conf"),
                    "--cluster-node-timeout", "5000",
                ]))
            created = subprocess.run(
                ["redis-cli", "--cluster", "create", *self.addresses, "--cluster-replicas", "0", "--cluster-yes"],
                capture_output=True, text=True, timeout=60,
            )
            if created.returncode != 0:
                raise RuntimeError(f"redis-cli --cluster create failed:\n{created.stdout}\n{created.stderr}")
            for server in self.servers:
                wait_until(lambda server=server: b"cluster_state:ok" in self.command(server.port, "CLUSTER INFO"),
                           what=f"cluster_state:ok on {server.port}")
        except BaseException:
            self.stop()
            raise

    @property
    def addresses(self) -> list[str]:
        return [f"127.0.0.1:{server.port}" for server in self.servers]

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(self.addresses)

    @staticmethod
    def command(port: int, command: str) -> bytes:
        """One inline command to one node; the raw reply (enough for status and info replies)."""
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
                s.sendall(command.encode() + b"\r\n")
                return s.recv(65536)
        except OSError:
            return b""

    def stop(self) -> None:
        for server in self.servers:
            server.stop()


class SimClusterProcess:
    """bench/simcluster.py as a subprocess; its ready line carries the node URLs."""

    def __init__(self, nodes: int = 3, **options):
        args = [PY, str(REPO / "bench" / "simcluster.py"), "--nodes", str(nodes), "--port", "0"]
        for key, value in options.items():
            flag = "--" + key.replace("_", "-")
            if value is True:
                args.append(flag)
            elif value not in (False, None):
                args += [flag, str(value)]
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        line = self.proc.stdout.readline() if self.proc.stdout else ""
        if not line:
            raise RuntimeError(f"simcluster did not start: {' '.join(args)}")
        self.nodes: list[str] = json.loads(line)["nodes"]

    @property
    def url(self) -> str:
        return self.nodes[0]

    def stats(self) -> dict:
        return json.loads(http_get(self.url + "/_sim/stats")[1])

    def stop_node(self, i: int) -> None:
        status, body = http_post(f"{self.nodes[(i + 1) % len(self.nodes)]}/_sim/nodes/{i}/_stop")
        assert status == 200, body

    def start_node(self, i: int) -> None:
        status, body = http_post(f"{self.nodes[(i + 1) % len(self.nodes)]}/_sim/nodes/{i}/_start")
        assert status == 200, body

    def hang_node(self, i: int) -> None:
        """Node i accepts and reads requests but answers none (a SIGSTOPped process) until resume_node(i)."""
        status, body = http_post(f"{self.nodes[(i + 1) % len(self.nodes)]}/_sim/nodes/{i}/_hang")
        assert status == 200, body

    def resume_node(self, i: int) -> None:
        status, body = http_post(f"{self.nodes[(i + 1) % len(self.nodes)]}/_sim/nodes/{i}/_resume")
        assert status == 200, body

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def tenant(name: str, key: str | None = None, plan: str = "standard", **extra) -> dict:
    """A tenant entry for a config dict; `key` is the plaintext API key (hashed here)."""
    entry = {"plan": plan, "api_keys": [hash_secret(key or f"{name}-key")], "indices": [f"{name}-*"]}
    entry.update(extra)
    return entry


def make_config(nodes: list[str], tenants: dict | None = None, plans: dict | None = None, **overrides) -> dict:
    """A complete config dict on free ports, with generous plans unless told otherwise."""
    config = {
        "listen": f"127.0.0.1:{free_port()}",
        "admin_listen": f"127.0.0.1:{free_port()}",
        "upstream": {"nodes": nodes, "health_interval_s": 0.5, "node_cooldown_s": 1.0},
        "access_log": {"path": None},
        "plans": plans or {
            "standard": {
                "search": {"rate": 100000, "burst": 1000000},
                "write": {"rate": 100000, "burst": 1000000},
                "read": {"rate": 100000, "burst": 1000000},
                "admin": {"rate": 1000, "burst": 10000},
                "max_concurrent": 64,
                "max_queue": 256,
                "max_wait_ms": 2000,
            }
        },
        "tenants": tenants if tenants is not None else {"acme": tenant("acme"), "globex": tenant("globex")},
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            config[key] = {**config[key], **value}
        else:
            config[key] = value
    return config


#: how long a proxy process may take to answer /health after it was started (seconds)
PROCESS_START_S = 60.0


class ProxyProcess:
    """`python -m proxy run --config FILE` as a subprocess, with its logs in files."""

    def __init__(self, config: dict, workdir: Path, workers: int = 1, env: dict | None = None):
        workdir.mkdir(parents=True, exist_ok=True)
        self.workdir = workdir
        self.config = config
        self.config_path = workdir / "sluicegate.yaml"
        self.write_config(config)
        self.stdout_path = workdir / "proxy.stdout"
        self.stderr_path = workdir / "proxy.stderr"
        self.url = ("https://" if config.get("listen_tls") else "http://") + config["listen"]
        self.admin = "http://" + config["admin_listen"]
        self._stdout = open(self.stdout_path, "wb")
        self._stderr = open(self.stderr_path, "wb")
        self.proc = subprocess.Popen(
            [PY, "-m", "proxy", "run", "--config", str(self.config_path), "--workers", str(workers)],
            stdout=self._stdout, stderr=self._stderr, cwd=REPO, env={**os.environ, **(env or {})},
        )
        try:
            # (generous: the real clusters' JVMs start in the background while the first tests run, and a
            # Python process importing on two busy cores took over 15 s to answer)
            wait_until(lambda: self.proc.poll() is not None or http_get(self.admin + "/health")[0] == 200,
                       PROCESS_START_S, what="proxy /health")
            if workers > 1:
                wait_until(lambda: self.stderr().count("listening on") >= workers, PROCESS_START_S,
                           what="all workers listening")
        except TimeoutError as exc:
            self.stop()
            raise TimeoutError(f"{exc}; the proxy's stderr:\n{self.stderr()[-3000:]}") from None
        if self.proc.poll() is not None:
            raise RuntimeError(f"proxy exited with {self.proc.returncode}:\n{self.stderr()}")

    def write_config(self, config: dict) -> None:
        tmp = self.config_path.with_suffix(".tmp")
        tmp.write_text(yaml.safe_dump(config))
        os.replace(tmp, self.config_path)  # atomic: a reload never reads a half-written file

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def access_log(self) -> list[dict]:
        """The JSON lines the proxy wrote to stdout (buffered there: stop the proxy first to see all)."""
        return [json.loads(line) for line in self.stdout_path.read_text().splitlines() if line.startswith("{")]

    def metrics(self) -> str:
        return http_get(self.admin + "/metrics")[1].decode()

    def metric(self, name: str, **labels) -> float:
        """Sum of the samples of `name` whose labels include `labels`."""
        return metric_value(self.metrics(), name, **labels)

    def tenants(self) -> dict:
        return json.loads(http_get(self.admin + "/tenants")[1])

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 10.0) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._stdout.close()
        self._stderr.close()
        return self.proc.returncode


def metric_value(text: str, name: str, **labels) -> float:
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name) or line.startswith("#"):
            continue
        head, _, value = line.rpartition(" ")
        metric, _, label_text = head.partition("{")
        if metric != name:
            continue
        found = dict(
            part.split("=", 1) for part in label_text.rstrip("}").split(",") if "=" in part
        )
        found = {k: v.strip('"') for k, v in found.items()}
        if all(found.get(k) == str(v) for k, v in labels.items()):
            total += float(value)
    return total


class Processes:
    """Owns every process a test starts and stops them all at the end."""

    def __init__(self, tmp_path: Path):
        self.tmp_path = tmp_path
        self._owned: list = []

    def redis(self, **kw) -> RedisServer:
        server = RedisServer(self.tmp_path / f"redis-{len(self._owned)}", **kw)
        self._owned.append(server)
        return server

    def redis_cluster(self, masters: int = 3) -> RedisCluster:
        cluster = RedisCluster(self.tmp_path / f"redis-cluster-{len(self._owned)}", masters)
        self._owned.append(cluster)
        return cluster

    def simcluster(self, nodes: int = 3, **options) -> SimClusterProcess:
        cluster = SimClusterProcess(nodes, **options)
        self._owned.append(cluster)
        return cluster

    def proxy(self, config: dict, workers: int = 1, env: dict | None = None) -> ProxyProcess:
        proxy = ProxyProcess(config, self.tmp_path / f"proxy-{len(self._owned)}", workers=workers, env=env)
        self._owned.append(proxy)
        return proxy

    def close(self) -> None:
        for owned in reversed(self._owned):
            try:
                owned.stop()
            except Exception:  # noqa: BLE001 - teardown must reach every process
                pass
        self._owned.clear()
