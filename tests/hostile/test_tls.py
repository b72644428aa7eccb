"""HTTPS through hypercorn with a generated certificate whose subject CN is the address devices
dial (EDIP §1.4: Android's self-signed mode checks only the CN)."""

from __future__ import annotations

import ssl
from typing import TYPE_CHECKING, Any

import httpx
import pytest
import trio
import trustme

from tests.durability.harness import generic_headers

if TYPE_CHECKING:
    from pathlib import Path


@pytest.fixture
def ca() -> trustme.CA:
    return trustme.CA()


async def test_tls_serves_edip_with_the_cn_android_checks(
    start_server: Any, tmp_path: Path, ca: trustme.CA
) -> None:
    cert = ca.issue_cert("127.0.0.1", "localhost", common_name="127.0.0.1")
    cert_path, key_path = tmp_path / "server.pem", tmp_path / "server.key"
    cert.cert_chain_pems[0].write_to_path(str(cert_path))
    for pem in cert.cert_chain_pems[1:]:
        pem.write_to_path(str(cert_path), append=True)
    cert.private_key_pem.write_to_path(str(key_path))
    server = await start_server(tls_cert=cert_path, tls_key=key_path)
    assert server.url.startswith("https://127.0.0.1:")

    context = ssl.create_default_context()
    ca.configure_trust(context)
    async with httpx.AsyncClient(base_url=server.url, verify=context, timeout=10.0) as client:
        r = await client.post("/job", json={"job_name": "xor_et"}, headers=generic_headers("tls"))
        assert r.status_code == 200
        assert r.json()["status"] == "OK"

    # The certificate the server presents names 127.0.0.1 in its subject CN.
    host, port = server.url.removeprefix("https://").rsplit(":", 1)
    tcp = await trio.open_tcp_stream(host, int(port))
    stream = trio.SSLStream(tcp, context, server_hostname="127.0.0.1")
    async with stream:
        await stream.do_handshake()
        peer = stream.getpeercert()
        assert peer is not None
        subject = {k: v for rdn in peer["subject"] for k, v in rdn}
        assert subject["commonName"] == "127.0.0.1"
        assert ("IP Address", "127.0.0.1") in peer["subjectAltName"]

    # A client that does not trust the CA is refused; plain HTTP on the TLS port gets no reply.
    async with httpx.AsyncClient(base_url=server.url, timeout=10.0) as untrusting:
        with pytest.raises(httpx.ConnectError):
            await untrusting.get("/healthz")
    plain = server.url.replace("https://", "http://")
    async with httpx.AsyncClient(base_url=plain, timeout=10.0) as client:
        with pytest.raises(httpx.HTTPError):
            await client.get("/healthz")
