"""Certificate names that identify a tenant over mutual TLS: subjects and subject alternative names.

A tenant's `client_cert_subjects` entry is either a subject distinguished name or one subject
alternative name with its kind in front:

    CN=search-app,OU=platform,O=Acme        a subject: every attribute, in any order
    /O=Acme/OU=platform/CN=search-app       the same, as `openssl x509 -subject` once printed it
    O = Acme, OU = platform, CN = search-app   ... and as it prints it now
    DNS:search-app.acme.internal            a SAN: DNS, URI, email or IP
    URI:spiffe://acme.internal/search-app

`certificate_name` turns such an entry into a key; `names_of` turns the certificate a client
presented (as `ssl` decodes it) into the keys it answers to. A subject matches when it has exactly
the same attributes (RFC 5280's comparison: types by name, values without regard to case or runs of
white space); a SAN matches when the certificate lists it. Pure functions, no I/O.
"""
from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping

#: attribute names, long (as `ssl` decodes a certificate) and short (as people write them), to one spelling
_TYPES = {
    "commonname": "CN", "cn": "CN",
    "countryname": "C", "c": "C",
    "stateorprovincename": "ST", "st": "ST", "s": "ST",
    "localityname": "L", "l": "L",
    "organizationname": "O", "o": "O",
    "organizationalunitname": "OU", "ou": "OU",
    "emailaddress": "EMAILADDRESS", "email": "EMAILADDRESS", "e": "EMAILADDRESS",
    "domaincomponent": "DC", "dc": "DC",
    "userid": "UID", "uid": "UID",
    "serialnumber": "SERIALNUMBER",
    "streetaddress": "STREET", "street": "STREET",
    "title": "TITLE",
    "givenname": "GIVENNAME", "surname": "SURNAME",
    "organizationidentifier": "ORGANIZATIONIDENTIFIER",
}
#: SAN kinds, as people write them and as `ssl` names them, to one spelling
_SAN_KINDS = {"dns": "DNS", "uri": "URI", "email": "EMAIL", "ip": "IP", "ip address": "IP"}
_SPACES = re.compile(r"\s+")


def _type(name: str) -> str:
    name = name.strip()
    return _TYPES.get(name.lower(), name.upper())


def _value(value: str) -> str:
    return _SPACES.sub(" ", value.strip()).casefold()


def subject_key(attributes: Iterable[tuple[str, str]]) -> str:
    """The key of a subject given as (type, value) pairs, whatever their order and spelling."""
    return "subject:" + "\x1f".join(sorted(f"{_type(t)}={_value(v)}" for t, v in attributes))


def san_key(kind: str, value: str) -> str | None:
    """The key of one subject alternative name; None for a kind tenants cannot be named by."""
    kind = _SAN_KINDS.get(kind.strip().lower(), "")
    value = value.strip()
    if not kind or not value:
        return None
    if kind == "IP":
        try:
            value = ipaddress.ip_address(value).compressed
        except ValueError:
            return None
    elif kind in ("DNS", "EMAIL"):
        value = value.lower()
    return f"{kind}:{value}"


def certificate_name(text: str) -> str:
    """The key of a configured certificate name (a subject or "KIND:value"); ValueError if it is neither."""
    text = text.strip()
    kind, sep, rest = text.partition(":")
    if sep and "=" not in kind and kind.strip().lower() in _SAN_KINDS:
        key = san_key(kind, rest)
        if key is None:
            raise ValueError(f"{text!r}: not a valid {kind.strip()} name")
        return key
    if text.lower().startswith("subject="):
        text = text[len("subject="):].strip()
    attributes = _parse_dn(text)
    if not attributes:
        raise ValueError(f"{text!r} is neither a subject (like 'CN=app,O=Acme') nor a SAN (like 'DNS:app.example')")
    return subject_key(attributes)


def _parse_dn(text: str) -> list[tuple[str, str]]:
    """(type, value) pairs of a DN written as RFC 4514 ("CN=a,O=b"), with spaces ("CN = a, O = b") or
    slashes ("/O=b/CN=a"). Backslash escapes and double-quoted values are understood."""
    separators = "/" if text.startswith("/") else ",;+"
    parts: list[str] = []
    current: list[str] = []
    quoted = False
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == "\\" and i + 1 < len(text):
            pair = text[i + 1:i + 3]
            if len(pair) == 2 and all(c in "0123456789abcdefABCDEF" for c in pair):
                current.append(chr(int(pair, 16)))
                i += 3
                continue
            current.append(text[i + 1])
            i += 2
            continue
        if ch == '"':
            quoted = not quoted
        elif ch in separators and not quoted:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
        i += 1
    if quoted:
        raise ValueError(f"{text!r}: unbalanced double quote")
    parts.append("".join(current))
    attributes = []
    for part in parts:
        if not part.strip():
            if separators == "/":
                continue  # the leading slash
            raise ValueError(f"{text!r}: empty attribute")
        name, eq, value = part.partition("=")
        if not eq or not name.strip() or not value.strip():
            raise ValueError(f"{text!r}: {part.strip()!r} is not TYPE=value")
        if not re.fullmatch(r"[A-Za-z][A-Za-z0-9-]*|[0-9]+(\.[0-9]+)+", name.strip()):
            raise ValueError(f"{text!r}: {name.strip()!r} is not an attribute type")
        attributes.append((name, value))
    return attributes


def names_of(peercert: Mapping) -> tuple[str, ...]:
    """The keys a client certificate answers to: its subject's, then one per usable SAN.
    `peercert` is what `SSLSocket.getpeercert()` (or the transport's "peercert") returns."""
    names: list[str] = []
    subject = peercert.get("subject") or ()
    pairs = [(t, v) for rdn in subject for t, v in rdn]
    if pairs:
        names.append(subject_key(pairs))
    for kind, value in peercert.get("subjectAltName") or ():
        key = san_key(kind, value)
        if key is not None:
            names.append(key)
    return tuple(names)


def describe(peercert: Mapping) -> str:
    """The certificate's subject as one line ("CN=app,O=Acme"), for logs and refusals."""
    subject = peercert.get("subject") or ()
    return ",".join(f"{_type(t)}={v}" for rdn in reversed(subject) for t, v in rdn) or "(no subject)"
