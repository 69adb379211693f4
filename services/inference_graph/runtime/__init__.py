"""I/O to NATS and etcd; no role logic.

This package is the only place that talks to the infrastructure servers. Roles
(frontend, processor, router, workers) use it through small, typed APIs:

- ``config``: where the servers are (``NATS_SERVER``, ``ETCD_ENDPOINTS``, ...);
- ``names``: every NATS subject and etcd key, built by pure functions;
- ``discovery``: instance and model registration under etcd leases, and watches;
- ``request_plane``: streamed request/response over NATS with ack, end, error
  and cancel frames (``wire.ResponseFrame``);
- ``event_plane``: KV events and load metrics over NATS;
- ``errors``: the exception tree callers catch;
- ``nats_flush``: waiting until the server has a connection's subscriptions;
- ``embedded``: real nats-server / etcd processes for tests and local runs.

What a role *does* with a request never lives here.
"""
