"""Headers the cluster trusts stay with the proxy (issue 17, item 9), on real Elasticsearch with security on.

The session's secured Elasticsearch (tests/realclusters.py: HTTPS, client certificates required): the
proxy's file-realm user may `run_as` a user who has no rights at all. Straight to the node, the header
makes the search run as that user (403); through the proxy it is not forwarded, and the search runs as
the proxy."""
from __future__ import annotations

import json

import pytest
import urllib3

from tests.processes import make_config, tenant
from tests.realclusters import RUN_AS_VICTIM, unique_index

pytestmark = pytest.mark.real_cluster


def test_run_as_through_the_proxy_is_impossible(procs, elasticsearch_secured):
    cluster, access = elasticsearch_secured, elasticsearch_secured.access
    http = urllib3.PoolManager(retries=False, timeout=30, ssl_context=access.context())
    as_proxy = {"Authorization": access.basic(access.proxy_user, access.proxy_password), "Content-Type": "application/json"}
    index = unique_index("acme")
    created = http.request("PUT", f"{cluster.url}/{index}", headers=as_proxy, body=b"{}")
    assert created.status == 200, created.data
    run_as = {"es-security-runas-user": RUN_AS_VICTIM}
    # Straight to the node, the proxy's credentials with the header act as the victim: the header is real.
    direct = http.request("POST", f"{cluster.url}/{index}/_search", headers={**as_proxy, **run_as}, body=b"{}")
    assert direct.status == 403 and f"run as [{RUN_AS_VICTIM}]".encode() in direct.data, direct.data

    tls = {"ca_file": str(access.ca_file), "client_cert": str(access.client_cert), "client_key": str(access.client_key)}
    proxy = procs.proxy(make_config(cluster.urls, tenants={"acme": tenant("acme")}, upstream={
        "tls": tls, "auth": {"username": access.proxy_user, "password": access.proxy_password}}))
    tenant_headers = {"Authorization": "ApiKey acme-key", "Content-Type": "application/json", **run_as}
    through = urllib3.PoolManager(retries=False, timeout=30).request(
        "POST", f"{proxy.url}/{index}/_search", headers=tenant_headers, body=b"{}")
    assert through.status == 200, through.data  # run as the proxy: the header never reached the node
    assert json.loads(through.data)["hits"]["total"]["value"] == 0
