"""A throwaway public-key infrastructure for the TLS tests and benches, made with `cryptography`.

`Pki(directory)` makes a CA; `server(...)` and `client(...)` issue certificates signed by it and
write each as PEM files (certificate, key) into `directory`. Keys are EC P-256 (fast to make, and
what a modern issuer hands out); `rsa=True` gives RSA-2048 instead. Nothing here is secret: the
files live only as long as the test session's temporary directory.
"""
from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa as rsa_keys
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True)
class Issued:
    """One certificate and its key, as files."""

    cert_file: Path
    key_file: Path
    subject: str  # as RFC 4514 (e.g. "CN=acme-app,O=Acme")

    @property
    def cert_pem(self) -> bytes:
        return self.cert_file.read_bytes()

    @property
    def key_pem(self) -> bytes:
        return self.key_file.read_bytes()


def _key(rsa: bool):
    return rsa_keys.generate_private_key(public_exponent=65537, key_size=2048) if rsa else ec.generate_private_key(ec.SECP256R1())


def _pem_key(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def _name(common_name: str, organization: str | None) -> x509.Name:
    attrs = []
    if organization:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization))
    attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
    return x509.Name(attrs)


class Pki:
    """A CA in `directory`, and the certificates it issues."""

    def __init__(self, directory: Path, name: str = "Sluicegate Test CA", *, rsa: bool = False):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.rsa = rsa
        self._ca_key = _key(rsa)
        now = datetime.datetime.now(datetime.timezone.utc)
        subject = _name(name, "Sluicegate Tests")
        self._ca_name = subject
        self._ca = (
            x509.CertificateBuilder()
            .subject_name(subject).issuer_name(subject)
            .public_key(self._ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False, key_agreement=False,
                                         encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(self._ca_key.public_key()), critical=False)
            .sign(self._ca_key, hashes.SHA256())
        )
        stem = name.lower().replace(" ", "-")
        self.ca_file = self.directory / f"{stem}.pem"
        self.ca_file.write_bytes(self._ca.public_bytes(serialization.Encoding.PEM))

    @property
    def ca_pem(self) -> bytes:
        return self.ca_file.read_bytes()

    def issue(
        self,
        stem: str,
        common_name: str,
        *,
        organization: str | None = None,
        dns: tuple[str, ...] = (),
        ips: tuple[str, ...] = (),
        uris: tuple[str, ...] = (),
        emails: tuple[str, ...] = (),
        server: bool = True,
        client: bool = True,
        days: float = 365,
        not_before_days: float = -1,
        into: Path | None = None,
    ) -> Issued:
        """A certificate for `common_name` signed by this CA, written to `<stem>.crt` / `<stem>.key` in
        `into` (default: the CA's directory). `days` is how long from now it stays valid (negative:
        already expired)."""
        key = _key(self.rsa)
        now = datetime.datetime.now(datetime.timezone.utc)
        subject = _name(common_name, organization)
        usages = ([ExtendedKeyUsageOID.SERVER_AUTH] if server else []) + ([ExtendedKeyUsageOID.CLIENT_AUTH] if client else [])
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject).issuer_name(self._ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now + datetime.timedelta(days=not_before_days))
            .not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self._ca_key.public_key()), critical=False)
        )
        names: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
        names += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
        names += [x509.UniformResourceIdentifier(u) for u in uris]
        names += [x509.RFC822Name(e) for e in emails]
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        cert = builder.sign(self._ca_key, hashes.SHA256())
        into = Path(into) if into is not None else self.directory
        into.mkdir(parents=True, exist_ok=True)
        cert_file, key_file = into / f"{stem}.crt", into / f"{stem}.key"
        cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_file.write_bytes(_pem_key(key))
        key_file.chmod(0o600)
        return Issued(cert_file, key_file, subject.rfc4514_string())

    def server(self, stem: str = "server", common_name: str = "localhost", **kwargs) -> Issued:
        """A server certificate for localhost and 127.0.0.1 (and whatever else `dns`/`ips` add)."""
        kwargs.setdefault("dns", ("localhost",))
        kwargs.setdefault("ips", ("127.0.0.1",))
        return self.issue(stem, common_name, client=False, **kwargs)

    def client(self, stem: str, common_name: str, **kwargs) -> Issued:
        """A client certificate (clientAuth only)."""
        return self.issue(stem, common_name, server=False, **kwargs)


_session: Pki | None = None
_session_lock = __import__("threading").Lock()


def session_pki() -> Pki:
    """One CA for the whole test session (the real-cluster fixtures start in background threads and
    need it too), in a temporary directory removed when the session ends."""
    global _session
    with _session_lock:
        if _session is None:
            import atexit
            import shutil
            import tempfile

            directory = Path(tempfile.mkdtemp(prefix="sg-pki-"))
            atexit.register(shutil.rmtree, directory, True)
            _session = Pki(directory)
        return _session
