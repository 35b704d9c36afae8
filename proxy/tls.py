"""TLS on both sides: the SSL contexts, the checks of their files, and the listener's reload in place.

- **Upstream** (`upstream.tls`): one client `SSLContext` per config load, shared by every connection
  to every https:// node — requests, health checks, cluster-health and index-size polls alike.
  Verification is on unless the config says `verify: false` (then a warning at every load).
- **Listener** (`listen_tls`): one server `SSLContext` for the life of the process. A reload reads
  the certificate and key again, proves the pair on a throwaway context, and only then loads the
  same bytes into the live context (`load_cert_chain` on a context in use applies to every
  handshake after it; connections already open keep their session). A bad pair changes nothing.
- **Files** (`check_files`): every certificate, key and CA file the config names is read and
  parsed, the key matched to its certificate, and the dates checked — before `run` serves and on
  every reload, and by `check-config`.
- **Mutual TLS**: `peer_names` gives the names a client's certificate answers to (see certnames).

Parsing a certificate's dates needs no third-party package: a few lines of DER walking do it.
"""
from __future__ import annotations

import base64
import binascii
import datetime
import logging
import os
import re
import ssl
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import certnames
from .config import Config, ConfigError, ListenTLS, UpstreamConfig, UpstreamTLS
from .upstream_http import ConnectionLostEarly

log = logging.getLogger("sluicegate.tls")

VERSIONS = {"TLSv1.2": ssl.TLSVersion.TLSv1_2, "TLSv1.3": ssl.TLSVersion.TLSv1_3}
#: a certificate expiring sooner than this is a warning at check-config, start and reload
EXPIRY_WARNING = datetime.timedelta(days=14)

Problems = list[tuple[str, str]]


# ---------------------------------------------------------------------------------------------
# Certificates: PEM blocks, and the few DER fields the checks need
# ---------------------------------------------------------------------------------------------

_PEM_CERT = re.compile(rb"-----BEGIN CERTIFICATE-----(.+?)-----END CERTIFICATE-----", re.S)
_PEM_KEY = re.compile(rb"-----BEGIN ((?:RSA |EC |ENCRYPTED |)PRIVATE KEY)-----")
_CN = b"\x06\x03\x55\x04\x03"  # the OID 2.5.4.3 (commonName), DER-encoded


@dataclass(frozen=True)
class CertificateDates:
    """What the checks read from one certificate."""

    not_before: datetime.datetime
    not_after: datetime.datetime
    common_name: str | None

    @property
    def label(self) -> str:
        return f"certificate CN={self.common_name!s}" if self.common_name else "certificate"


def _tlv(data: bytes, pos: int) -> tuple[int, int, int]:
    """(tag, start of the value, end of the value) of the DER element at `pos`."""
    tag = data[pos]
    length = data[pos + 1]
    pos += 2
    if length & 0x80:
        count = length & 0x7F
        if not 1 <= count <= 4:
            raise ValueError("DER length")
        length = int.from_bytes(data[pos:pos + count], "big")
        pos += count
    if pos + length > len(data):
        raise ValueError("DER element runs past the end")
    return tag, pos, pos + length


def _time(tag: int, raw: bytes) -> datetime.datetime:
    text = raw.decode("ascii")
    if tag == 0x17:  # UTCTime: YYMMDDHHMMSSZ, years 1950-2049 (RFC 5280)
        year = int(text[:2])
        text = f"{1900 + year if year >= 50 else 2000 + year}{text[2:]}"
    elif tag != 0x18:  # GeneralizedTime: YYYYMMDDHHMMSSZ
        raise ValueError("not a time")
    return datetime.datetime.strptime(text, "%Y%m%d%H%M%SZ").replace(tzinfo=datetime.timezone.utc)


def certificate_dates(der: bytes) -> CertificateDates:
    """Validity and common name of one DER certificate; ValueError if it is not X.509."""
    try:
        tag, start, _ = _tlv(der, 0)  # Certificate
        if tag != 0x30:
            raise ValueError("not a SEQUENCE")
        tag, pos, tbs_end = _tlv(der, start)  # TBSCertificate
        tag, _, end = _tlv(der, pos)
        if tag == 0xA0:  # [0] version
            pos = end
            tag, _, end = _tlv(der, pos)
        pos = end  # serialNumber
        _, _, pos = _tlv(der, pos)  # signature algorithm
        _, _, pos = _tlv(der, pos)  # issuer
        tag, validity, pos = _tlv(der, pos)  # validity
        t1, a1, b1 = _tlv(der, validity)
        t2, a2, b2 = _tlv(der, b1)
        not_before, not_after = _time(t1, der[a1:b1]), _time(t2, der[a2:b2])
        _, subject, subject_end = _tlv(der, pos)
        common_name = None
        at = der.find(_CN, subject, subject_end)
        if at >= 0:
            _, a, b = _tlv(der, at + len(_CN))
            common_name = der[a:b].decode("utf-8", "replace")
        return CertificateDates(not_before, not_after, common_name)
    except (IndexError, UnicodeDecodeError) as exc:
        raise ValueError(str(exc)) from None


def pem_certificates(data: bytes) -> list[bytes]:
    """The DER bytes of every PEM certificate in `data`; ValueError for a block that is not base64."""
    out = []
    for block in _PEM_CERT.findall(data):
        try:
            out.append(base64.b64decode(b"".join(block.split()), validate=True))
        except binascii.Error:
            raise ValueError("a PEM certificate block is not valid base64") from None
    return out


# ---------------------------------------------------------------------------------------------
# check_files: every file the config names, read and checked before it is used
# ---------------------------------------------------------------------------------------------


def check_files(config: Config, now: datetime.datetime | None = None) -> tuple[Problems, Problems]:
    """(errors, warnings) about the certificate, key and CA files in `config`, each with its key path.

    Errors: a file that is missing, unreadable or not PEM; a key that is encrypted or does not match
    its certificate; a certificate (leaf) that has expired or is not valid yet; a CA file in which
    every certificate has expired. Warnings: a certificate that expires within 14 days, an expired
    CA among live ones, a key file every user can read."""
    now = now or datetime.datetime.now(datetime.timezone.utc)
    errors: Problems = []
    warnings: Problems = []
    upstream = config.upstream.tls
    if upstream is not None and config.upstream.https:
        if upstream.ca_file is not None:
            _check_ca("upstream.tls.ca_file", upstream.ca_file, now, errors, warnings)
        if upstream.client_cert is not None and upstream.client_key is not None:
            _check_pair(("upstream.tls.client_cert", upstream.client_cert), ("upstream.tls.client_key", upstream.client_key),
                        now, errors, warnings)
    listen = config.listen_tls
    if listen is not None:
        _check_pair(("listen_tls.cert_file", listen.cert_file), ("listen_tls.key_file", listen.key_file), now, errors, warnings)
        if listen.client_ca_file is not None:
            _check_ca("listen_tls.client_ca_file", listen.client_ca_file, now, errors, warnings)
    return errors, warnings


def _read(key: str, path: str, errors: Problems) -> bytes | None:
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        errors.append((key, f"no such file: {path}"))
        return None
    except IsADirectoryError:
        errors.append((key, f"{path} is a directory, not a PEM file"))
        return None
    except OSError as exc:
        errors.append((key, f"cannot read {path}: {exc.strerror or exc}"))
        return None
    if not data.strip():
        errors.append((key, f"{path} is empty"))
        return None
    return data


def _certificates(key: str, path: str, data: bytes, errors: Problems) -> list[CertificateDates] | None:
    try:
        ders = pem_certificates(data)
        if not ders:
            errors.append((key, f"{path} holds no PEM certificate (-----BEGIN CERTIFICATE-----)"))
            return None
        return [certificate_dates(der) for der in ders]
    except ValueError as exc:
        errors.append((key, f"{path} holds a certificate that cannot be parsed ({exc})"))
        return None


def _date(when: datetime.datetime) -> str:
    return when.strftime("%Y-%m-%d %H:%M UTC")


def _dates(key: str, path: str, cert: CertificateDates, now: datetime.datetime, leaf: bool,
           errors: Problems, warnings: Problems) -> None:
    where = f"{path}: {cert.label}"
    if cert.not_after <= now:
        (errors if leaf else warnings).append((key, f"{where} expired on {_date(cert.not_after)}"))
    elif cert.not_before > now:
        (errors if leaf else warnings).append((key, f"{where} is not valid until {_date(cert.not_before)}"))
    elif cert.not_after - now < EXPIRY_WARNING:
        days = (cert.not_after - now).total_seconds() / 86400
        warnings.append((key, f"{where} expires on {_date(cert.not_after)}, in {days:.1f} days"))


def _check_pair(cert: tuple[str, str], key: tuple[str, str], now: datetime.datetime,
                errors: Problems, warnings: Problems) -> None:
    (cert_key, cert_path), (key_key, key_path) = cert, key
    before = len(errors)
    cert_data = _read(cert_key, cert_path, errors)
    if cert_data is not None:
        chain = _certificates(cert_key, cert_path, cert_data, errors)
        for i, dates in enumerate(chain or ()):
            _dates(cert_key, cert_path, dates, now, i == 0, errors, warnings)
    key_data = _read(key_key, key_path, errors)
    if key_data is not None:
        found = _PEM_KEY.search(key_data)
        if found is None:
            errors.append((key_key, f"{key_path} holds no PEM private key (-----BEGIN PRIVATE KEY-----)"))
        elif found.group(1) == b"ENCRYPTED PRIVATE KEY" or b"Proc-Type: 4,ENCRYPTED" in key_data:
            errors.append((key_key, f"{key_path} is encrypted; Sluicegate needs it unencrypted "
                                    "(protect it with file permissions instead)"))
        elif os.stat(key_path).st_mode & stat.S_IROTH:
            warnings.append((key_key, f"{key_path} is readable by every user on this machine; chmod o-r it"))
    if len(errors) == before:
        try:
            _load_chain(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER), cert_data, key_data)  # type: ignore[arg-type]
        except ssl.SSLError as exc:
            if "KEY_VALUES_MISMATCH" in str(exc) or "key values mismatch" in str(exc):
                errors.append((key_key, f"{key_path} is not the key of the certificate in {cert_path} ({cert_key})"))
            else:
                errors.append((cert_key, f"{cert_path} with {key_path}: {_reason(exc)}"))


def _check_ca(key: str, path: str, now: datetime.datetime, errors: Problems, warnings: Problems) -> None:
    data = _read(key, path, errors)
    if data is None:
        return
    certs = _certificates(key, path, data, errors)
    if certs is None:
        return
    live = [c for c in certs if c.not_before <= now < c.not_after]
    if not live:
        errors.append((key, f"every certificate in {path} has expired or is not valid yet"))
        return
    problems: Problems = []
    for cert in certs:
        _dates(key, path, cert, now, False, errors, problems)
    warnings.extend(problems[:5])  # a copy of a system bundle may hold many stale CAs; a few say enough
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cafile=path)
    except ssl.SSLError as exc:
        errors.append((key, f"{path}: {_reason(exc)}"))


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return exc.reason.replace("_", " ").lower()
    return str(exc)


def _config_error(key: str, exc: BaseException) -> ConfigError:
    return ConfigError([(key, _reason(exc) if isinstance(exc, ssl.SSLError) else (getattr(exc, "strerror", None) or str(exc)))])


def _load_chain(context: ssl.SSLContext, cert: bytes, key: bytes) -> None:
    """`context.load_cert_chain` from bytes already read (so that what was checked is what is loaded,
    even if the files change meanwhile). In memory where the system allows (memfd), else via a private
    temporary directory."""
    if hasattr(os, "memfd_create") and os.path.isdir("/proc/self/fd"):
        fds = []
        try:
            for data in (cert, key):
                fd = os.memfd_create("sluicegate-tls", os.MFD_CLOEXEC)
                fds.append(fd)
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
            context.load_cert_chain(f"/proc/self/fd/{fds[0]}", f"/proc/self/fd/{fds[1]}")
            return
        finally:
            for fd in fds:
                os.close(fd)
    with tempfile.TemporaryDirectory(prefix="sluicegate-tls-") as directory:  # mode 0700
        paths = []
        for name, data in (("cert.pem", cert), ("key.pem", key)):
            path = os.path.join(directory, name)
            with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as f:
                f.write(data)
            paths.append(path)
        context.load_cert_chain(paths[0], paths[1])


# ---------------------------------------------------------------------------------------------
# The upstream side
# ---------------------------------------------------------------------------------------------


def upstream_context(upstream: UpstreamConfig) -> ssl.SSLContext | None:
    """The client context for https:// nodes, built from `upstream.tls` (defaults when unset); None for
    http:// nodes. Raises ConfigError with the key path when a file cannot be loaded."""
    if not upstream.https:
        return None
    tls = upstream.tls or UpstreamTLS()
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED and check_hostname on
    context.minimum_version = VERSIONS[tls.min_version]
    context.set_alpn_protocols(["http/1.1"])
    if tls.verify:
        if tls.ca_file is not None:
            try:
                context.load_verify_locations(cafile=tls.ca_file)
            except (OSError, ssl.SSLError) as exc:
                raise _config_error("upstream.tls.ca_file", exc) from None
        else:
            context.load_default_certs(ssl.Purpose.SERVER_AUTH)
    else:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if tls.client_cert is not None and tls.client_key is not None:
        try:
            context.load_cert_chain(tls.client_cert, tls.client_key)
        except (OSError, ssl.SSLError) as exc:
            raise _config_error("upstream.tls.client_cert", exc) from None
    return context


def server_hostname(upstream: UpstreamConfig, host: str) -> str:
    """The name a node at `host` is asked for (SNI) and checked against: `upstream.tls.server_name` or the host."""
    tls = upstream.tls
    return tls.server_name if tls is not None and tls.server_name else host


def explain_failure(exc: BaseException, upstream: UpstreamConfig) -> str | None:
    """What an operator should do about a TLS failure talking to a node; None if `exc` is not one."""
    tls = upstream.tls or UpstreamTLS()
    if not isinstance(exc, ssl.SSLError) and isinstance(exc.__cause__, ssl.SSLError):
        exc = exc.__cause__  # an alert that closed a connection the client thought established (TLS 1.3)
    if isinstance(exc, ssl.SSLCertVerificationError):
        code = exc.verify_code
        if code in (62, 64):  # X509_V_ERR_HOSTNAME_MISMATCH, X509_V_ERR_IP_ADDRESS_MISMATCH
            return ("the node's certificate is not issued for the name Sluicegate checks: set upstream.tls.server_name "
                    "to a name the certificate holds, or name the nodes by it in upstream.nodes")
        if code in (9, 10):  # not yet valid, expired
            return "the node's certificate is not valid now (expired or not yet valid): renew it on the cluster"
        trusted = f"upstream.tls.ca_file ({tls.ca_file})" if tls.ca_file else "the system's CA store (upstream.tls.ca_file is unset)"
        return (f"the node's certificate is not signed by a CA in {trusted}: set upstream.tls.ca_file to the CA "
                "that signed the cluster's HTTP certificate")
    if isinstance(exc, ssl.SSLError):
        text = f"{exc.reason or ''} {exc}".upper()
        if "WRONG_VERSION_NUMBER" in text or "RECORD_LAYER_FAILURE" in text or "PACKET_LENGTH_TOO_LONG" in text:
            return "the node does not speak TLS on this port: is it an http:// node?"
        client_alert = any(alert in text for alert in ("CERTIFICATE_REQUIRED", "UNKNOWN_CA", "BAD_CERTIFICATE",
                                                          "CERTIFICATE_UNKNOWN", "HANDSHAKE_FAILURE"))
        if client_alert and tls.client_cert is None:
            return "the node asks for a client certificate: set upstream.tls.client_cert and client_key"
        if client_alert and "HANDSHAKE_FAILURE" not in text:
            return "the node refused Sluicegate's client certificate (upstream.tls.client_cert): is it signed by a CA the cluster trusts?"
        if "PROTOCOL_VERSION" in text or "UNSUPPORTED_PROTOCOL" in text:
            return f"the node and Sluicegate share no TLS version (upstream.tls.min_version is {tls.min_version})"
        return "the TLS handshake with the node failed"
    if isinstance(exc, ConnectionLostEarly) and not upstream.https:
        return ("the node closed the connection before answering: if the cluster serves HTTPS (Elasticsearch 8 "
                "does by default), name its nodes https:// in upstream.nodes")
    if isinstance(exc, ConnectionLostEarly):
        # TLS 1.3 finishes the client's side of the handshake before the node has judged the client's
        # certificate: a refusal arrives as a closed connection, with no error the client can read.
        if tls.client_cert is None:
            return ("the node closed the TLS connection before answering: if it requires client certificates "
                    "(Elasticsearch: xpack.security.http.ssl.client_authentication: required), set "
                    "upstream.tls.client_cert and client_key")
        return ("the node closed the TLS connection before answering: does it trust the CA that signed "
                "upstream.tls.client_cert?")
    return None


# ---------------------------------------------------------------------------------------------
# The listener side
# ---------------------------------------------------------------------------------------------


def _read_pair(tls: ListenTLS) -> tuple[bytes, bytes]:
    errors: Problems = []
    cert = _read("listen_tls.cert_file", tls.cert_file, errors)
    key = _read("listen_tls.key_file", tls.key_file, errors)
    if errors:
        raise ConfigError(errors)
    return cert, key  # type: ignore[return-value]


def _ca_bytes(tls: ListenTLS) -> bytes | None:
    if tls.client_ca_file is None:
        return None
    try:
        return Path(tls.client_ca_file).read_bytes()
    except OSError:
        return None


class ListenerTLS:
    """The proxy listener's server context: built once, its certificate reloaded in place."""

    def __init__(self, tls: ListenTLS):
        self.config = tls
        cert, key = _read_pair(tls)
        self.context = self._build(tls, cert, key)
        self._ca = _ca_bytes(tls)

    @staticmethod
    def _build(tls: ListenTLS, cert: bytes, key: bytes) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = VERSIONS[tls.min_version]
        context.set_alpn_protocols(["http/1.1"])
        context.options |= ssl.OP_NO_RENEGOTIATION  # a renegotiating client could make the proxy work for nothing
        try:
            _load_chain(context, cert, key)
        except ssl.SSLError as exc:
            raise ConfigError([("listen_tls.cert_file", f"{tls.cert_file} with {tls.key_file}: {_reason(exc)}")]) from None
        if tls.client_ca_file is not None:
            try:
                context.load_verify_locations(cafile=tls.client_ca_file)
            except (OSError, ssl.SSLError) as exc:
                raise _config_error("listen_tls.client_ca_file", exc) from None
            context.verify_mode = ssl.CERT_REQUIRED if tls.client_authentication == "required" else ssl.CERT_OPTIONAL
        return context

    def reload(self, tls: ListenTLS) -> list[str]:
        """Read certificate and key again and, once the pair has proved itself on a throwaway context,
        put it into the live one (new handshakes use it; open connections keep theirs). Raises
        ConfigError, changing nothing, for a bad pair. Returns the settings that need a restart."""
        cert, key = _read_pair(tls)
        self._build(tls, cert, key)  # the proof: raises before the live context is touched
        _load_chain(self.context, cert, key)
        self.context.minimum_version = VERSIONS[tls.min_version]
        pending = []
        if tls.client_ca_file != self.config.client_ca_file or _ca_bytes(tls) != self._ca:
            pending.append("listen_tls.client_ca_file")
        if tls.client_authentication != self.config.client_authentication:
            pending.append("listen_tls.client_authentication")
        self.config = tls.model_copy(update={"client_ca_file": self.config.client_ca_file,
                                             "client_authentication": self.config.client_authentication})
        return pending


def peer_names(transport: Any) -> tuple[str, ...] | None:
    """The names (certnames keys) of the certificate the client presented on this connection; None
    when the connection is not TLS or the client presented none. Called once per connection."""
    peercert = transport.get_extra_info("peercert")
    if not peercert:
        return None
    names = certnames.names_of(peercert)
    if log.isEnabledFor(logging.DEBUG):
        log.debug("client certificate %s", certnames.describe(peercert))
    return names


def preflight(config: Config) -> tuple[Problems, Problems]:
    """Everything a config points at, checked before it is used (start, reload, check-config):
    the TLS files (`check_files`) and the upstream credentials' secrets. (errors, warnings)."""
    from . import credentials

    errors, warnings = check_files(config)
    auth_errors, auth_warnings = credentials.check(config.upstream.auth)
    return errors + auth_errors, warnings + auth_warnings
