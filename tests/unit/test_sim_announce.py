"""kit.sim._closes.announce_close over the simulator's raw Redis pool, against a real redis-server:
a close announced without a failure, and a Redis user without PUBLISH on the close channel counted and
named with how to fix it (never with its password)."""

from __future__ import annotations

import dataclasses
import logging
import secrets

import pytest
import uvloop

from kit._resp import LinkPool, checked, encode_command, open_link, parse_redis_url
from kit.sim._closes import CloseListener, announce_close

pytestmark = pytest.mark.timeout(30)


def test_a_close_is_published_and_a_user_without_the_channel_gets_the_acl_hint(redis_server, caplog):
    async def main() -> None:
        admin = parse_redis_url(redis_server.url)
        link = await open_link(admin)
        user, password = f"kit-test-{secrets.token_hex(4)}", secrets.token_hex(16)
        # may connect and PING, may not PUBLISH anywhere
        checked(await link.call(encode_command(b"ACL", b"SETUSER", user, b"on", f">{password}", b"+ping"), 1))
        ok = LinkPool(lambda: open_link(admin), size=1, wait_s=1.0, call_s=5.0)
        denied = dataclasses.replace(admin, username=user, password=password)
        pool = LinkPool(lambda: open_link(denied), size=1, wait_s=1.0, call_s=5.0)
        try:
            heard = CloseListener()
            await announce_close(ok.commands, "sess-1", heard)
            assert heard.announce_failures == 0

            listener = CloseListener()
            with caplog.at_level(logging.WARNING, logger="kit.sim._closes"):
                await announce_close(pool.commands, "sess-2", listener)
            assert listener.announce_failures == 1
            assert "redis_acl_sim_rules" in caplog.text and password not in caplog.text
        finally:  # an open connection left to the loop's close makes it hang under filterwarnings=error
            for p in (ok, pool):
                await p.aclose()
            link.close()

    uvloop.run(main())
