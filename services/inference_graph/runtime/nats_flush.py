"""Waiting until the NATS server has processed what this connection wrote."""

from __future__ import annotations

from nats.aio.client import Client as NATS


async def interest_registered(nc: NATS) -> None:
    """Return once the server has processed every SUB this connection issued so far.

    nats-py 2.16's ``Client.flush()`` writes its PING straight to the socket, while SUB and PUB
    commands wait in a buffer for the client's flusher task: the PONG can come back before a SUB
    issued just before it reached the server. Measured on one nats-server: 7-15 of 300 requests
    sent from another connection right after ``subscribe`` + ``flush`` got "no responders"; 0 of
    600 after two flushes. The first flush hands the buffered commands to the flusher, which runs
    before its PONG can be read; the second PING goes out after them.
    """
    await nc.flush()
    await nc.flush()
