"""proxy/tls.py: the SSL contexts of both sides, the checks of the files they load, the listener's
reload in place, and the names a client certificate answers to — against real TLS handshakes on
loopback sockets, with certificates made in the session (tests/pki.py)."""
from __future__ import annotations

import asyncio
import datetime
import os
import ssl
from pathlib import Path

import pytest
from cryptography import x509

from proxy import tls
from proxy.certnames import certificate_name
from proxy.config import ConfigError, ListenTLS, parse_config
from proxy.upstream_http import ConnectionLostEarly, ConnectionPool, request_head
from tests.pki import Pki


def config(upstream_tls: dict | None = None, listen_tls: dict | None = None, https: bool = True):
    data = {
        "upstream": {"nodes": [f"{'https' if https else 'http'}://127.0.0.1:9200"]},
        "plans": {"standard": {}},
    }
    if upstream_tls is not None:
        data["upstream"]["tls"] = upstream_tls
    if listen_tls is not None:
        data["listen_tls"] = listen_tls
    return parse_config(data)


def listen_files(issued) -> dict:
    return {"cert_file": str(issued.cert_file), "key_file": str(issued.key_file)}


def not_after(path: Path) -> datetime.datetime:
    return x509.load_pem_x509_certificate(path.read_bytes()).not_valid_after_utc


# ---- reading certificates without a third-party package ------------------------------------


@pytest.mark.parametrize("rsa", [False, True], ids=["ec", "rsa"])
def test_certificate_dates_match_what_cryptography_reads(tmp_path, rsa):
    pki = Pki(tmp_path, rsa=rsa)
    issued = pki.server("node", "node-1.example", days=30)
    parsed = x509.load_pem_x509_certificate(issued.cert_pem)
    dates = tls.certificate_dates(tls.pem_certificates(issued.cert_pem)[0])
    assert dates.not_after == parsed.not_valid_after_utc.replace(microsecond=0)
    assert dates.not_before == parsed.not_valid_before_utc.replace(microsecond=0)
    assert dates.common_name == "node-1.example"


def test_certificate_dates_read_generalized_time_past_2049(pki, tmp_path):
    issued = pki.server("far", days=365 * 40, into=tmp_path)  # notAfter in 20xx > 2049: GeneralizedTime
    dates = tls.certificate_dates(tls.pem_certificates(issued.cert_pem)[0])
    assert dates.not_after == not_after(issued.cert_file).replace(microsecond=0)
    assert dates.not_after.year > 2049


def test_certificate_dates_refuse_what_is_not_x509():
    with pytest.raises(ValueError):
        tls.certificate_dates(b"\x30\x03\x02\x01\x01")
    with pytest.raises(ValueError):
        tls.certificate_dates(b"not der at all")


# ---- check_files: every broken-file case is caught, with its key path ----------------------


@pytest.fixture(scope="module")
def files(tmp_path_factory, pki):
    """Good and broken certificate files, made once for the module."""
    d = tmp_path_factory.mktemp("tls-files")
    good = pki.server("good", into=d)
    other = pki.server("other", into=d)
    client = pki.client("client", "sluicegate", into=d)
    (d / "garbage.pem").write_text("this is not a certificate\n")
    (d / "empty.pem").write_text("")
    (d / "broken.pem").write_text("-----BEGIN CERTIFICATE-----\nMIIB!!notbase64\n-----END CERTIFICATE-----\n")
    (d / "notder.pem").write_text("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    (d / "encrypted.key").write_text("-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n")
    (d / "dir.pem").mkdir()
    expired_ca = Pki(d / "expired-ca", "Expired CA")
    expired = expired_ca.server("expired", days=-1, not_before_days=-30, into=d)
    (d / "only-expired-ca.pem").write_bytes(expired.cert_pem)  # a "CA bundle" whose one certificate has expired
    return {"dir": d, "good": good, "other": other, "client": client, "expired": expired, "ca": pki.ca_file}


def listener_problems(cert, key, **extra):
    return tls.check_files(config(listen_tls={"cert_file": str(cert), "key_file": str(key), **extra}))


def test_check_files_passes_a_good_pair_and_ca(files):
    errors, warnings = listener_problems(files["good"].cert_file, files["good"].key_file, client_ca_file=str(files["ca"]))
    assert (errors, warnings) == ([], [])


@pytest.mark.parametrize("name, key_path, message", [
    ("missing.pem", "listen_tls.cert_file", "no such file"),
    ("dir.pem", "listen_tls.cert_file", "is a directory"),
    ("empty.pem", "listen_tls.cert_file", "is empty"),
    ("garbage.pem", "listen_tls.cert_file", "holds no PEM certificate"),
    ("broken.pem", "listen_tls.cert_file", "cannot be parsed"),
    ("notder.pem", "listen_tls.cert_file", "cannot be parsed"),
])
def test_check_files_refuses_a_certificate_file_that_is_not_one(files, name, key_path, message):
    errors, _ = listener_problems(files["dir"] / name, files["good"].key_file)
    assert [path for path, _ in errors] == [key_path]
    assert message in errors[0][1]


@pytest.mark.parametrize("name, message", [
    ("missing.key", "no such file"),
    ("garbage.pem", "holds no PEM private key"),
    ("encrypted.key", "is encrypted"),
])
def test_check_files_refuses_a_key_file_that_is_not_a_usable_key(files, name, message):
    errors, _ = listener_problems(files["good"].cert_file, files["dir"] / name)
    assert [path for path, _ in errors] == ["listen_tls.key_file"]
    assert message in errors[0][1]


def test_check_files_refuses_a_key_that_does_not_match_its_certificate(files):
    errors, _ = listener_problems(files["good"].cert_file, files["other"].key_file)
    assert errors == [("listen_tls.key_file",
                       f"{files['other'].key_file} is not the key of the certificate in {files['good'].cert_file} "
                       "(listen_tls.cert_file)")]


def test_check_files_refuses_the_same_on_the_upstream_client_certificate(files):
    cfg = config({"ca_file": str(files["ca"]), "client_cert": str(files["client"].cert_file),
                  "client_key": str(files["good"].key_file)})
    errors, _ = tls.check_files(cfg)
    assert [path for path, _ in errors] == ["upstream.tls.client_key"]


def test_check_files_refuses_an_expired_certificate(files):
    errors, _ = listener_problems(files["expired"].cert_file, files["expired"].key_file)
    assert [path for path, _ in errors] == ["listen_tls.cert_file"]
    assert "expired on" in errors[0][1]


def test_check_files_refuses_a_certificate_not_valid_yet(files):
    cfg = config(listen_tls=listen_files(files["good"]))
    dates = tls.certificate_dates(tls.pem_certificates(files["good"].cert_pem)[0])
    errors, _ = tls.check_files(cfg, now=dates.not_before - datetime.timedelta(minutes=1))
    assert [path for path, _ in errors] == ["listen_tls.cert_file"]
    assert "is not valid until" in errors[0][1]


def test_a_certificate_expiring_within_14_days_is_a_warning(files):
    cfg = config(listen_tls=listen_files(files["good"]))
    end = not_after(files["good"].cert_file)
    errors, warnings = tls.check_files(cfg, now=end - datetime.timedelta(days=3))
    assert errors == []
    assert [path for path, _ in warnings] == ["listen_tls.cert_file"]
    assert "expires on" in warnings[0][1] and "in 3.0 days" in warnings[0][1]
    assert tls.check_files(cfg, now=end - datetime.timedelta(days=15)) == ([], [])


@pytest.mark.parametrize("key_path", ["upstream.tls.ca_file", "listen_tls.client_ca_file"])
@pytest.mark.parametrize("name, message", [
    ("missing.pem", "no such file"),
    ("garbage.pem", "holds no PEM certificate"),
    ("only-expired-ca.pem", "every certificate in"),
])
def test_check_files_refuses_a_ca_file_that_cannot_verify_anything(files, key_path, name, message):
    path = str(files["dir"] / name)
    if key_path.startswith("upstream"):
        cfg = config({"ca_file": path})
    else:
        cfg = config(listen_tls={**listen_files(files["good"]), "client_ca_file": path})
    errors, _ = tls.check_files(cfg)
    assert [p for p, _ in errors] == [key_path]
    assert message in errors[0][1]


def test_a_key_every_user_can_read_is_a_warning(files, tmp_path):
    key = tmp_path / "open.key"
    key.write_bytes(files["good"].key_pem)
    os.chmod(key, 0o644)
    errors, warnings = listener_problems(files["good"].cert_file, key)
    assert errors == []
    assert warnings == [("listen_tls.key_file", f"{key} is readable by every user on this machine; chmod o-r it")]


# ---- the upstream context -------------------------------------------------------------------


def test_no_context_for_http_nodes():
    assert tls.upstream_context(config(https=False).upstream) is None


def test_the_upstream_context_verifies_by_default():
    context = tls.upstream_context(config().upstream)
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2


def test_verify_false_turns_both_checks_off_and_min_version_applies():
    context = tls.upstream_context(config({"verify": False, "min_version": "TLSv1.3"}).upstream)
    assert context.verify_mode == ssl.CERT_NONE and not context.check_hostname
    assert context.minimum_version == ssl.TLSVersion.TLSv1_3


class Answering(asyncio.Protocol):
    """A one-line HTTP server: answers every request with `{}`; remembers the transports it served."""

    seen: list

    def connection_made(self, transport):
        self.transport = transport
        self.seen.append(transport)

    def data_received(self, data):
        if b"\r\n\r\n" in data:
            self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}")


async def serve(context: ssl.SSLContext):
    """A TLS server on a free loopback port; (server, port, transports it accepted)."""
    seen: list = []
    protocol = type("Server", (Answering,), {"seen": seen})
    server = await asyncio.get_running_loop().create_server(protocol, "127.0.0.1", 0, ssl=context)
    return server, server.sockets[0].getsockname()[1], seen


def node_context(issued, client_ca: Path | None = None) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(issued.cert_file, issued.key_file)
    if client_ca is not None:
        context.load_verify_locations(cafile=str(client_ca))
        context.verify_mode = ssl.CERT_REQUIRED
    return context


async def get_once(port: int, upstream_tls: dict) -> int:
    """GET / through the lean client with the context proxy/tls.py builds; the status."""
    cfg = config(upstream_tls)
    pool = ConnectionPool("127.0.0.1", port, 4, ssl=tls.upstream_context(cfg.upstream),
                          server_hostname=tls.server_hostname(cfg.upstream, "127.0.0.1"))
    conn = await pool.connect(5.0)
    try:
        response = await conn.send(request_head("GET", "/", f"127.0.0.1:{port}", [], 0), None, False, 5.0)
        await response.read()
        response.release()
        return response.status
    finally:
        pool.close()
        conn.close()


async def test_the_lean_client_verifies_the_node_certificate(pki, tmp_path):
    server, port, _ = await serve(node_context(pki.server("node", into=tmp_path)))
    async with server:
        assert await get_once(port, {"ca_file": str(pki.ca_file)}) == 200


async def test_a_node_signed_by_another_ca_is_refused_and_the_hint_names_ca_file(pki, tmp_path):
    other = Pki(tmp_path / "other", "Other CA")
    server, port, _ = await serve(node_context(other.server("node", into=tmp_path)))
    async with server:
        with pytest.raises(ssl.SSLCertVerificationError) as caught:
            await get_once(port, {"ca_file": str(pki.ca_file)})
    hint = tls.explain_failure(caught.value, config({"ca_file": str(pki.ca_file)}).upstream)
    assert f"upstream.tls.ca_file ({pki.ca_file})" in hint


async def test_a_name_mismatch_is_refused_and_server_name_fixes_it(pki, tmp_path):
    issued = pki.server("named", dns=("es-1.cluster.internal",), ips=(), into=tmp_path)
    server, port, _ = await serve(node_context(issued))
    async with server:
        with pytest.raises(ssl.SSLCertVerificationError) as caught:
            await get_once(port, {"ca_file": str(pki.ca_file)})
        assert "upstream.tls.server_name" in tls.explain_failure(caught.value, config().upstream)
        assert await get_once(port, {"ca_file": str(pki.ca_file), "server_name": "es-1.cluster.internal"}) == 200


async def test_verify_false_talks_to_an_untrusted_node(pki, tmp_path):
    other = Pki(tmp_path / "other", "Other CA")
    server, port, _ = await serve(node_context(other.server("node", into=tmp_path)))
    async with server:
        assert await get_once(port, {"verify": False}) == 200


async def test_a_node_requiring_client_certificates_gets_the_proxys(pki, tmp_path):
    client = pki.client("proxy-client", "sluicegate", organization="Sluicegate", into=tmp_path)
    server, port, seen = await serve(node_context(pki.server("node", into=tmp_path), client_ca=pki.ca_file))
    async with server:
        with pytest.raises((ConnectionLostEarly, ssl.SSLError, ConnectionResetError)) as caught:
            await get_once(port, {"ca_file": str(pki.ca_file)})
        if isinstance(caught.value, ConnectionLostEarly):
            assert "upstream.tls.client_cert" in tls.explain_failure(caught.value, config().upstream)
        status = await get_once(port, {"ca_file": str(pki.ca_file), "client_cert": str(client.cert_file),
                                       "client_key": str(client.key_file)})
    assert status == 200
    subjects = [t.get_extra_info("peercert") for t in seen]
    assert tls.peer_names(seen[-1])[0] == certificate_name("CN=sluicegate,O=Sluicegate"), subjects


# ---- the listener's context, reloaded in place ----------------------------------------------


async def peer_common_name(port: int, ca: Path) -> str:
    context = ssl.create_default_context(cafile=str(ca))
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context, server_hostname="localhost")
    cert = writer.get_extra_info("peercert")
    writer.close()
    return dict(pair[0] for pair in cert["subject"])["commonName"]


def install(issued, cert_file: Path, key_file: Path) -> None:
    """Put a certificate pair in place the way rotation tools do: write aside, rename over."""
    for source, target in ((issued.cert_file, cert_file), (issued.key_file, key_file)):
        aside = target.with_suffix(".new")
        aside.write_bytes(source.read_bytes())
        os.replace(aside, target)


async def test_reload_puts_the_new_certificate_into_the_live_context(pki, tmp_path):
    first, second = pki.server("first", "first", into=tmp_path), pki.server("second", "second", into=tmp_path)
    cert_file, key_file = tmp_path / "live.crt", tmp_path / "live.key"
    install(first, cert_file, key_file)
    listen = ListenTLS(cert_file=str(cert_file), key_file=str(key_file))
    listener = tls.ListenerTLS(listen)
    server, port, _ = await serve(listener.context)
    async with server:
        assert await peer_common_name(port, pki.ca_file) == "first"
        context = ssl.create_default_context(cafile=str(pki.ca_file))
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context, server_hostname="localhost")
        install(second, cert_file, key_file)
        assert listener.reload(listen) == []
        assert await peer_common_name(port, pki.ca_file) == "second"
        # the connection opened before the reload still works, on its own session
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await reader.readuntil(b"{}")).startswith(b"HTTP/1.1 200")
        writer.close()


async def test_reload_refuses_a_mismatched_pair_and_the_old_one_keeps_serving(pki, tmp_path):
    first, second = pki.server("first", "first", into=tmp_path), pki.server("second", "second", into=tmp_path)
    cert_file, key_file = tmp_path / "live.crt", tmp_path / "live.key"
    install(first, cert_file, key_file)
    listen = ListenTLS(cert_file=str(cert_file), key_file=str(key_file))
    listener = tls.ListenerTLS(listen)
    server, port, _ = await serve(listener.context)
    async with server:
        cert_file.write_bytes(second.cert_pem)  # half a rotation: the new certificate, the old key
        with pytest.raises(ConfigError) as refused:
            listener.reload(listen)
        assert refused.value.errors[0][0] == "listen_tls.cert_file"
        assert await peer_common_name(port, pki.ca_file) == "first"
        key_file.write_bytes("not a key".encode())
        with pytest.raises(ConfigError):
            listener.reload(listen)
        assert await peer_common_name(port, pki.ca_file) == "first"


def test_reload_says_a_new_client_ca_needs_a_restart(pki, tmp_path):
    issued = pki.server("node", into=tmp_path)
    other = Pki(tmp_path / "other", "Other CA")
    listen = ListenTLS(**listen_files(issued), client_ca_file=str(pki.ca_file))
    listener = tls.ListenerTLS(listen)
    assert listener.reload(listen) == []
    changed = ListenTLS(**listen_files(issued), client_ca_file=str(other.ca_file), client_authentication="optional")
    assert listener.reload(changed) == ["listen_tls.client_ca_file", "listen_tls.client_authentication"]
    assert listener.context.verify_mode == ssl.CERT_REQUIRED  # unchanged until the restart


async def test_peer_names_are_the_client_certificate_subject_and_sans(pki, tmp_path):
    client = pki.client("app", "search-app", organization="Acme", dns=("search.acme.internal",),
                        uris=("spiffe://acme.internal/search",), into=tmp_path)
    listener = tls.ListenerTLS(ListenTLS(**listen_files(pki.server("node", into=tmp_path)),
                                         client_ca_file=str(pki.ca_file)))
    server, port, seen = await serve(listener.context)
    async with server:
        context = ssl.create_default_context(cafile=str(pki.ca_file))
        context.load_cert_chain(client.cert_file, client.key_file)
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context, server_hostname="localhost")
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        await reader.readuntil(b"{}")
        writer.close()
    assert tls.peer_names(seen[0]) == (certificate_name("O=Acme, CN=search-app"), "DNS:search.acme.internal",
                                       "URI:spiffe://acme.internal/search")


async def test_required_client_authentication_refuses_a_client_without_a_certificate(pki, tmp_path):
    listener = tls.ListenerTLS(ListenTLS(**listen_files(pki.server("node", into=tmp_path)),
                                         client_ca_file=str(pki.ca_file)))
    server, port, seen = await serve(listener.context)
    async with server:
        context = ssl.create_default_context(cafile=str(pki.ca_file))
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context, server_hostname="localhost")
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        with pytest.raises((ssl.SSLError, ConnectionResetError, asyncio.IncompleteReadError)):
            await reader.readuntil(b"{}")
        writer.close()
    assert seen == []  # the server never got a connection to serve


# ---- the protocol listener (proxy/listener.py) over the listener's context -------------------


async def test_the_protocol_listener_hands_each_request_its_client_certificate_names(pki, tmp_path):
    from proxy.config import HardLimits
    from proxy.listener import Listener

    first, second = pki.server("first", "first", into=tmp_path), pki.server("second", "second", into=tmp_path)
    cert_file, key_file = tmp_path / "live.crt", tmp_path / "live.key"
    install(first, cert_file, key_file)
    listen = ListenTLS(cert_file=str(cert_file), key_file=str(key_file), client_ca_file=str(pki.ca_file),
                       client_authentication="optional")
    listener_tls = tls.ListenerTLS(listen)
    client = pki.client("app", "search-app", organization="Acme", dns=("search.acme.internal",), into=tmp_path)
    seen: list[tuple[str, object]] = []

    async def app(request) -> None:
        seen.append((request.scheme, request.certificate))
        request.respond(200, b"Content-Type: application/json\r\n", b"{}")

    listener = Listener(app, limits=HardLimits())
    server = await asyncio.get_running_loop().create_server(listener, "127.0.0.1", 0, ssl=listener_tls.context)
    port = server.sockets[0].getsockname()[1]
    try:
        with_cert = ssl.create_default_context(cafile=str(pki.ca_file))
        with_cert.load_cert_chain(client.cert_file, client.key_file)
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=with_cert, server_hostname="localhost")
        for _ in range(3):  # kept alive: one handshake, the names read once, every request carries them
            writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            assert (await reader.readuntil(b"{}")).startswith(b"HTTP/1.1 200")
        # rotation: new connections get the new certificate; this one goes on with its session
        install(second, cert_file, key_file)
        assert listener_tls.reload(listen) == []
        assert await peer_common_name(port, pki.ca_file) == "second"
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await reader.readuntil(b"{}")).startswith(b"HTTP/1.1 200")
        writer.close()
        # optional client authentication: a client without a certificate is served, with no names
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ssl.create_default_context(
            cafile=str(pki.ca_file)), server_hostname="localhost")
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await reader.readuntil(b"{}")).startswith(b"HTTP/1.1 200")
        writer.close()
    finally:
        server.close()
        listener.close_all()
    names = (certificate_name("O=Acme, CN=search-app"), "DNS:search.acme.internal")
    assert seen == [("https", names)] * 4 + [("https", None)]
