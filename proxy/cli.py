"""The `sluicegate` command: run, check-config, hash-key, schema, demo, calibrate."""
from __future__ import annotations

import argparse
import getpass
import json
import signal
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from .config import ConfigError, config_schema, config_warnings, hash_secret, load_config

REPO = Path(__file__).resolve().parent.parent
DEMO_CONFIG = REPO / "config" / "demo.yaml"
SIMCLUSTER = REPO / "bench" / "simcluster.py"
#: the demo config stores only digests; these are the plaintext keys it was made from
DEMO_KEYS = {"acme": "acme-demo-key", "globex": "globex-demo-key"}


def package_version() -> str:
    try:
        return version("sluicegate")
    except PackageNotFoundError:  # a source tree that was never installed
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    """The command line: every subcommand and argument with its help text."""
    parser = argparse.ArgumentParser(
        prog="sluicegate", description="Per-tenant, cost-aware throttling reverse proxy for Elasticsearch and OpenSearch.")
    parser.add_argument("--version", action="version", version=f"sluicegate {package_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{run,check-config,hash-key,schema,demo,calibrate}")
    run = sub.add_parser("run", help="serve the proxy", description="Serve the proxy until SIGTERM; SIGHUP reloads.")
    run.add_argument("--config", required=True, metavar="FILE", help="path to the YAML config")
    run.add_argument("--workers", type=int, default=1, metavar="N",
                     help="worker processes sharing the port (SO_REUSEPORT) under one supervisor (default 1)")
    check = sub.add_parser(
        "check-config", help="validate a config file; exit 1 with every error and its key path",
        description="Validate a config file: every error (types, cross-key rules, duplicate keys) with its key path, "
                    "in one pass, then exit 1; warnings are printed and exit 0.")
    check.add_argument("file", metavar="FILE", help="path to the YAML config to check")
    hashkey = sub.add_parser(
        "hash-key", help="print the sha256:<hex> form of an API key or password for the config",
        description="Print the sha256:<hex> form of an API key or password, as tenants' api_keys and users take it. "
                    "The secret is read from standard input (one trailing newline removed) or, on a terminal, "
                    "asked for twice without echo, so that it stays out of shell history and `ps`.")
    hashkey.add_argument("secret", nargs="?", metavar="SECRET",
                         help="deprecated: the secret on the command line (visible in shell history and `ps`); "
                              "pipe it in instead")
    sub.add_parser("schema", help="print the config's JSON Schema (for editors and CI validation)",
                   description="Print the JSON Schema of the config file, generated from the config's models. "
                               "The package ships the same file (proxy/sluicegate.schema.json).")
    demo = sub.add_parser("demo", help="start the simulated cluster and the proxy in front of it",
                          description="Start the bundled simulated cluster, seed a few documents, and serve the "
                                      "proxy in front of it (needs a source checkout).")
    demo.add_argument("--config", default=str(DEMO_CONFIG), metavar="FILE",
                      help="the proxy config to serve (default: config/demo.yaml)")
    calibrate = sub.add_parser(
        "calibrate", help="fit cost.weights to a real cluster; print the YAML block with the fit's error before and after",
        description="Run the battery of query shapes against a real cluster (a scratch sample index it creates and "
                    "deletes, or read-only against your own index), fit the cost weights to what each shape cost, "
                    "and print a cost.weights block with the error before and after. Load is capped.")
    from .calibrate import add_arguments

    add_arguments(calibrate)
    worker = sub.add_parser("_worker")  # started by the --workers supervisor; hidden from help
    worker.add_argument("--config", required=True, help="path to the YAML config")
    worker.add_argument("--index", type=int, required=True, help="this worker's number, from 0")
    worker.add_argument("--workers", type=int, required=True, help="how many workers share the port")
    worker.add_argument("--admin-socket", required=True, help="unix socket for this worker's admin API")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
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
    if args.command == "calibrate":
        from .calibrate import run as calibrate

        return calibrate(args)
    if args.command == "hash-key":
        return hash_key(args.secret)
    if args.command == "schema":
        print(schema_text(), end="")
        return 0
    return run_demo(Path(args.config))


def schema_text() -> str:
    """The config's JSON Schema as `sluicegate schema` prints it (and the package ships it)."""
    return json.dumps(config_schema(), indent=2, ensure_ascii=False) + "\n"


def hash_key(argument: str | None) -> int:
    """`sluicegate hash-key`: the secret from standard input, a prompt, or (deprecated) the argument."""
    if argument is not None and argument != "-":
        print("warning: a secret given as an argument stays in your shell history and shows in `ps`; "
              "next time pipe it in (sluicegate hash-key < file) or type it at the prompt", file=sys.stderr)
        secret = argument
    elif sys.stdin is not None and sys.stdin.isatty():
        try:
            secret = getpass.getpass("API key or password: ")
            if secret and getpass.getpass("again: ") != secret:
                print("error: the two entries differ; nothing printed", file=sys.stderr)
                return 1
        except (EOFError, KeyboardInterrupt):
            print(file=sys.stderr)
            return 1
    else:
        data = sys.stdin.buffer.read() if sys.stdin is not None else b""
        try:
            secret = data.decode("utf-8")
        except UnicodeDecodeError:
            print("error: the secret on standard input is not UTF-8", file=sys.stderr)
            return 1
        secret = secret[:-2] if secret.endswith("\r\n") else secret[:-1] if secret.endswith("\n") else secret
    if not secret:
        print("error: the key is empty (nothing was typed or piped in); nothing printed", file=sys.stderr)
        return 1
    print(hash_secret(secret))
    return 0


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
    tenants, plans = len(config.tenants), len(config.plans)
    print(f"{path}: ok ({tenants} tenant{'s' * (tenants != 1)}, {plans} plan{'s' * (plans != 1)}, hash {digest})")
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
  status page       : {admin}/   (open it in a browser)
  admin             : {admin}/health  {admin}/ready  {admin}/tenants  {admin}/metrics

Try it:
  curl -s -H 'Authorization: ApiKey {DEMO_KEYS['acme']}' '{proxy}/acme-logs/_search?q=message:error' | python3 -m json.tool
  curl -s -i -H 'Authorization: ApiKey {DEMO_KEYS['globex']}' -H 'Content-Type: application/json' \\
       '{proxy}/globex-logs/_search' -d '{{"query": {{"wildcard": {{"message": "*rror"}}}}}}'
  curl -s -i '{proxy}/acme-logs/_search'          # no credentials: 401
  curl -s {admin}/tenants
  curl -s {admin}/tenants/globex/shapes   # its costliest query shapes, literals redacted

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
            cluster.wait()
        if cluster.stdout is not None:
            cluster.stdout.close()


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

