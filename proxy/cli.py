"""The `sluicegate` command: run, check-config, hash-key, demo."""
from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
from pathlib import Path

from .config import ConfigError, config_warnings, hash_secret, load_config

REPO = Path(__file__).resolve().parent.parent
DEMO_CONFIG = REPO / "config" / "demo.yaml"
SIMCLUSTER = REPO / "bench" / "simcluster.py"
#: the demo config stores only digests; these are the plaintext keys it was made from
DEMO_KEYS = {"acme": "acme-demo-key", "globex": "globex-demo-key"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sluicegate", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="{run,check-config,hash-key,demo}")
    run = sub.add_parser("run", help="serve the proxy")
    run.add_argument("--config", required=True, help="path to the YAML config")
    run.add_argument("--workers", type=int, default=1, help="worker processes sharing the port (SO_REUSEPORT)")
    check = sub.add_parser("check-config", help="validate a config file; exit 1 with every error and its key path")
    check.add_argument("file")
    hashkey = sub.add_parser("hash-key", help="print the sha256:<hex> form of an API key or password for the config")
    hashkey.add_argument("secret")
    demo = sub.add_parser("demo", help="start the simulated cluster and the proxy in front of it")
    demo.add_argument("--config", default=str(DEMO_CONFIG))
    worker = sub.add_parser("_worker")  # started by the --workers supervisor; hidden from help
    worker.add_argument("--config", required=True)
    worker.add_argument("--index", type=int, required=True)
    worker.add_argument("--workers", type=int, required=True)
    worker.add_argument("--admin-socket", required=True)
    args = parser.parse_args(argv)

    if args.command == "_worker":
        from .server import run_worker

        return run_worker(args.config, args.index, args.workers, args.admin_socket)
    if args.command == "run":
        from .server import run as serve

        if args.workers < 1:
            parser.error("--workers must be at least 1")
        return serve(args.config, args.workers)
    if args.command == "check-config":
        return check_config(args.file)
    if args.command == "hash-key":
        print(hash_secret(args.secret))
        return 0
    return run_demo(Path(args.config))


def check_config(path: str) -> int:
    """Would `run` start with this file, here? The file itself, then every certificate, key, CA and
    secret file (or variable) it names, read and checked as `run` would."""
    from .tls import preflight

    try:
        config, digest = load_config(path)
        errors, warnings = preflight(config)
        if errors:
            raise ConfigError(errors)
    except ConfigError as exc:
        for key_path, message in exc.errors:
            print(f"{key_path or '<file>'}: {message}", file=sys.stderr)
        print(f"{path}: {len(exc.errors)} error(s)", file=sys.stderr)
        return 1
    for key_path, message in config_warnings(config) + warnings:
        print(f"warning: {key_path}: {message}", file=sys.stderr)
    print(f"{path}: ok ({len(config.tenants)} tenants, {len(config.plans)} plans, hash {digest})")
    return 0


def run_demo(config_path: Path) -> int:
    """Start the bundled simulated cluster, seed a few documents, and serve the proxy in front of it."""
    if not SIMCLUSTER.exists():
        print("sluicegate demo needs a source checkout (bench/simcluster.py); run it from the repository", file=sys.stderr)
        return 1
    config, _ = load_config(config_path)
    first = config.upstream.nodes[0]
    port = int(first.rsplit(":", 1)[1])
    cluster = subprocess.Popen(
        [sys.executable, str(SIMCLUSTER), "--nodes", str(len(config.upstream.nodes)), "--port", str(port),
         "--virtual-docs", "200000"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        ready = cluster.stdout.readline() if cluster.stdout else ""
        if not ready:
            print("the simulated cluster did not start", file=sys.stderr)
            return 1
        nodes = json.loads(ready)["nodes"]
        _seed(nodes[0])
        proxy = f"http://{config.listen}"
        admin = f"http://{config.admin_listen}"
        print(
            f"""
Sluicegate demo
  simulated cluster : {', '.join(nodes)}
  proxy             : {proxy}
  admin             : {admin}/health  {admin}/ready  {admin}/tenants  {admin}/metrics

Try it:
  curl -s -H 'Authorization: ApiKey {DEMO_KEYS['acme']}' '{proxy}/acme-logs/_search?q=message:error' | python3 -m json.tool
  curl -s -i -H 'Authorization: ApiKey {DEMO_KEYS['globex']}' -H 'Content-Type: application/json' \\
       '{proxy}/globex-logs/_search' -d '{{"query": {{"wildcard": {{"message": "*rror"}}}}}}'
  curl -s -i '{proxy}/acme-logs/_search'          # no credentials: 401
  curl -s {admin}/tenants

Point an Elasticsearch client at {proxy} with api_key="{DEMO_KEYS['acme']}". Ctrl-C stops.
""",
            flush=True,
        )
        from .server import run as serve

        return serve(str(config_path))
    finally:
        cluster.send_signal(signal.SIGTERM)
        try:
            cluster.wait(timeout=5)
        except subprocess.TimeoutExpired:
            cluster.kill()


def _seed(node: str) -> None:
    """A handful of log lines per demo tenant, written straight to the cluster."""
    import urllib.request

    lines = []
    for tenant in DEMO_KEYS:
        for i, message in enumerate(["service started", "request served", "error: upstream timeout", "user login"]):
            lines.append(json.dumps({"index": {"_index": f"{tenant}-logs", "_id": str(i)}}))
            lines.append(json.dumps({"message": message, "level": "error" if "error" in message else "info", "n": i}))
    request = urllib.request.Request(
        node + "/_bulk", data=("\n".join(lines) + "\n").encode(), headers={"Content-Type": "application/x-ndjson"}
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        response.read()

