"""The HTTP client shared by every node that uses one model keeps no cookies: a cookie one
node's answer set (a gateway's session, a CDN's bot cookie) never reaches another node."""

from __future__ import annotations

from app.agents.transport import model_http_client
from tests.steps.loopback_server import LOOPBACK, LoopbackServer, Reply


async def test_a_cookie_set_for_one_request_is_not_sent_with_the_next() -> None:
    server = LoopbackServer().start()
    try:
        server.route("/v1/a", Reply(headers=[("Set-Cookie", "session=node-a; Path=/")], body=b"{}"))
        server.route("/v1/b", Reply(body=b"{}"))
        client = model_http_client(LOOPBACK, timeout_s=5)
        try:
            assert (await client.get(server.url("/v1/a"))).status_code == 200
            assert (await client.get(server.url("/v1/b"))).status_code == 200
        finally:
            await client.aclose()
        assert "cookie" not in server.hits_for("/v1/b")[0].headers
        assert not client.cookies
    finally:
        server.stop()
