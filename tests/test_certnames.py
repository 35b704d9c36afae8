"""proxy/certnames.py: the names a tenant's client certificate is known by, as configured and as presented."""
from __future__ import annotations

import pytest

from proxy.certnames import certificate_name, describe, names_of

#: a client certificate as `ssl` decodes it (SSLSocket.getpeercert())
PEERCERT = {
    "subject": ((("countryName", "DE"),), (("organizationName", "Acme GmbH"),), (("organizationalUnitName", "platform"),),
                (("commonName", "search-app"),)),
    "subjectAltName": (("DNS", "Search.Acme.Internal"), ("URI", "spiffe://acme.internal/ns/search/sa/app"),
                       ("IP Address", "2001:DB8:0:0:0:0:0:1\n".strip()), ("email", "Search@Acme.example"),
                       ("othername", "<unsupported>")),
}


@pytest.mark.parametrize("written", [
    "CN=search-app,OU=platform,O=Acme GmbH,C=DE",                 # RFC 4514 (most specific first)
    "C=DE, O=Acme GmbH, OU=platform, CN=search-app",              # certificate order
    "/C=DE/O=Acme GmbH/OU=platform/CN=search-app",                # old openssl x509 -subject
    "subject=C = DE, O = Acme GmbH, OU = platform, CN = search-app",  # new openssl x509 -subject
    "commonName=search-app, organizationalUnitName=platform, organizationName=acme  gmbh, countryName=de",
])
def test_every_common_spelling_of_the_subject_matches_the_certificate(written):
    assert certificate_name(written) == names_of(PEERCERT)[0]


@pytest.mark.parametrize("written", ["CN=search-app,O=Acme GmbH,C=DE", "CN=search-app", "CN=search-app,OU=other,O=Acme GmbH,C=DE"])
def test_a_subject_matches_only_with_exactly_its_attributes(written):
    assert certificate_name(written) not in names_of(PEERCERT)


@pytest.mark.parametrize("written, key", [
    ("DNS:search.acme.internal", "DNS:search.acme.internal"),
    ("dns: SEARCH.acme.internal", "DNS:search.acme.internal"),
    ("URI:spiffe://acme.internal/ns/search/sa/app", "URI:spiffe://acme.internal/ns/search/sa/app"),
    ("IP:2001:db8::1", "IP:2001:db8::1"),
    ("email:search@acme.example", "EMAIL:search@acme.example"),
])
def test_sans_match_by_kind_and_value(written, key):
    assert certificate_name(written) == key
    assert key in names_of(PEERCERT)


def test_uris_are_case_sensitive_and_unsupported_sans_are_ignored():
    assert certificate_name("URI:spiffe://acme.internal/NS/search/sa/app") not in names_of(PEERCERT)
    assert len(names_of(PEERCERT)) == 5  # subject + 4 usable SANs; the othername is not one


def test_escapes_and_quotes_in_a_subject():
    assert certificate_name(r"CN=a\,b,O=x") == certificate_name('CN="a,b", O=x')
    assert certificate_name(r"CN=a\2cb,O=x") == certificate_name(r"CN=a\,b,O=x")


@pytest.mark.parametrize("bad", ["search-app", "CN=", "=x", "CN=a,,O=b", 'CN="a', "DNS:", "IP:not-an-ip", "CN x=1"])
def test_what_is_neither_a_subject_nor_a_san_is_refused(bad):
    with pytest.raises(ValueError):
        certificate_name(bad)


def test_describe_gives_the_subject_most_specific_first():
    assert describe(PEERCERT) == "CN=search-app,OU=platform,O=Acme GmbH,C=DE"
    assert describe({}) == "(no subject)"
