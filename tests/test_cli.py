"""The `sluicegate` command as a user runs it: real subprocesses, a real terminal for the prompt."""
from __future__ import annotations

import argparse
import importlib.resources
import json
import os
import pty
import select
import subprocess
import sys
import time
from importlib.metadata import version
from pathlib import Path

import yaml

from proxy.cli import build_parser, schema_text
from proxy.config import hash_secret

REPO = Path(__file__).resolve().parent.parent


def sluicegate(*args: str, stdin: bytes | None = b"") -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "proxy", *args], input=stdin, capture_output=True, cwd=REPO,
                          timeout=60)


def test_version():
    done = sluicegate("--version")
    assert done.returncode == 0 and done.stdout.decode().strip() == f"sluicegate {version('sluicegate')}"


def test_every_subcommand_and_argument_has_help_text():
    parser = build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    listed = {choice.dest for choice in subparsers._choices_actions}
    assert listed == {"run", "check-config", "hash-key", "schema", "demo", "calibrate"}  # `_worker` stays hidden
    for name, sub in subparsers.choices.items():
        if name == "_worker":
            continue
        for action in sub._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            assert action.help and len(action.help) > 10, f"{name} {action.dest} has no help text"
    for name in listed:
        assert sluicegate(name, "--help").returncode == 0


def test_hash_key_reads_the_secret_from_standard_input():
    for sent in (b"s3cret key", b"s3cret key\n", b"s3cret key\r\n"):  # one trailing newline is not the key
        done = sluicegate("hash-key", stdin=sent)
        assert done.returncode == 0 and done.stdout.decode().strip() == hash_secret("s3cret key"), sent
        assert done.stderr == b""
    kept = sluicegate("hash-key", stdin=b" spaces kept \n\n")
    assert kept.stdout.decode().strip() == hash_secret(" spaces kept \n")


def test_hash_key_refuses_an_empty_key():
    for sent in (b"", b"\n"):
        done = sluicegate("hash-key", stdin=sent)
        assert done.returncode == 1 and done.stdout == b"" and b"the key is empty" in done.stderr
    done = sluicegate("hash-key", "")
    assert done.returncode == 1 and done.stdout == b""


def test_hash_key_still_takes_an_argument_but_warns():
    done = sluicegate("hash-key", "old-habit")
    assert done.returncode == 0 and done.stdout.decode().strip() == hash_secret("old-habit")
    assert b"shell history" in done.stderr


def test_hash_key_prompts_twice_without_echo_on_a_terminal():
    transcript = _on_a_terminal(["hash-key"], [b"typed-secret\n", b"typed-secret\n"])
    assert "API key or password:" in transcript and "again:" in transcript
    assert "typed-secret" not in transcript  # no echo
    assert hash_secret("typed-secret") in transcript
    mismatch = _on_a_terminal(["hash-key"], [b"one\n", b"two\n"])
    assert "differ" in mismatch and "sha256:" not in mismatch


PROMPTS = (b"API key or password: ", b"again: ")


def _on_a_terminal(args: list[str], lines: list[bytes]) -> str:
    """Run the command with a pseudo-terminal as its only terminal; answer each prompt with a line."""
    main, secondary = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "proxy", *args], stdin=secondary, stdout=secondary,
                            stderr=secondary, cwd=REPO, start_new_session=True)  # no other controlling terminal
    os.close(secondary)
    out = b""
    pending = list(lines)
    deadline = time.monotonic() + 30
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([main], [], [], 0.5)
            if ready:
                try:
                    chunk = os.read(main, 4096)
                except OSError:  # the other side closed: the command ended
                    break
                if not chunk:
                    break
                out += chunk
                prompts = sum(out.count(prompt) for prompt in PROMPTS)
                if pending and prompts > len(lines) - len(pending):  # a prompt not answered yet
                    os.write(main, pending.pop(0))
            elif proc.poll() is not None:
                break
    finally:
        os.close(main)
        proc.wait(timeout=10)
    return out.decode(errors="replace")


def test_schema_is_printed_shipped_in_the_package_and_in_sync():
    done = sluicegate("schema")
    assert done.returncode == 0
    printed = json.loads(done.stdout)
    shipped = importlib.resources.files("proxy").joinpath("sluicegate.schema.json").read_text(encoding="utf-8")
    assert shipped == schema_text(), "proxy/sluicegate.schema.json is stale: run `sluicegate schema > " \
                                     "proxy/sluicegate.schema.json`"
    assert printed == json.loads(shipped)
    assert printed["title"] == "Sluicegate configuration" and printed["additionalProperties"] is False
    assert {"listen", "upstream", "plans", "tenants", "shapes", "security"} <= set(printed["properties"])
    assert printed["properties"]["listen"]["anyOf"][0]["type"] == "string"  # "host:port" in the file
    first = (REPO / "config" / "sluicegate.example.yaml").read_text().splitlines()[0]
    assert first == "# yaml-language-server: $schema=../proxy/sluicegate.schema.json"
    assert (REPO / "config" / "../proxy/sluicegate.schema.json").resolve() == REPO / "proxy" / "sluicegate.schema.json"


def test_check_config_reports_every_error_in_one_pass(tmp_path):
    key = hash_secret("k")
    path = tmp_path / "bad.yaml"
    path.write_text(f"""
upstream:
  nodes: [http://127.0.0.1:9200]
plans:
  standard:
    search: {{rate: fast, burst: 10}}
    max_queue: -1
tenants:
  acme:
    plan: standard
    api_keys: ["{key}"]
    indices: ["acme-*"]
  globex:
    plan: gold
    api_keys: ["{key}"]
    indices: ["globex-*"]
  initech:
    plan: standard
    indices: ["initech-*"]
  initech:
    plan: standard
    indices: ["initech-*"]
admission: {{min_limit: 10, max_limit: 5}}
""")
    done = sluicegate("check-config", str(path))
    assert done.returncode == 1
    errors = done.stderr.decode()
    for expected in (
        "plans.standard.search.rate: Input should be a valid number",  # type errors ...
        "plans.standard.max_queue: Input should be greater than or equal to 0",
        "tenants.globex.plan: unknown plan 'gold'",  # ... and cross-key errors, together
        "tenants.globex.api_keys.0: same key as tenant 'acme'",
        "tenants.initech: tenant has no api_keys, users or client_cert_subjects",
        "tenants.initech: duplicate key at line 20 (first at line 17)",
        "admission.min_limit: must not exceed admission.max_limit",
    ):
        assert expected in errors, f"missing {expected!r} in:\n{errors}"
    assert f"{path}: 7 error(s)" in errors


def test_a_duplicate_key_alone_is_an_error(tmp_path):
    config = yaml.safe_load((REPO / "config" / "demo.yaml").read_text())
    text = yaml.safe_dump(config) + "enforce: false\nenforce: true\n"
    path = tmp_path / "dup.yaml"
    path.write_text(text)
    done = sluicegate("check-config", str(path))
    assert done.returncode == 1 and "enforce: duplicate key" in done.stderr.decode()


def test_check_config_warns_about_a_missing_binding_secret_no_tenants_and_overlapping_grants(tmp_path):
    key = hash_secret("k")
    path = tmp_path / "warn.yaml"
    path.write_text(f"""
upstream: {{nodes: [http://127.0.0.1:9200]}}
plans: {{standard: {{}}}}
tenants:
  acme: {{plan: standard, api_keys: ["{key}"], indices: ["logs-*"]}}
  globex: {{plan: standard, api_keys: ["{hash_secret('g')}"], indices: ["logs-globex-*"]}}
""")
    done = sluicegate("check-config", str(path))
    warnings = done.stderr.decode()
    assert done.returncode == 0 and "ok (2 tenants, 1 plan," in done.stdout.decode()
    assert "warning: security.binding_secret: not set" in warnings
    assert "warning: tenants.acme.indices.0: 'logs-*' overlaps tenant 'globex'" in warnings
    empty = tmp_path / "empty.yaml"
    empty.write_text("upstream: {nodes: [http://127.0.0.1:9200]}\nplans: {standard: {}}\n")
    done = sluicegate("check-config", str(empty))
    assert done.returncode == 0 and "warning: tenants: no tenants are configured" in done.stderr.decode()
    assert "binding_secret" not in done.stderr.decode()  # nothing to bind without tenants


def test_the_demo_config_checks_clean():
    done = sluicegate("check-config", str(REPO / "config" / "demo.yaml"))
    assert done.returncode == 0 and done.stderr == b""
