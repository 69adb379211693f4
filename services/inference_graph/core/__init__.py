"""Pure logic shared by every role and both runtimes: the graph spec model
(``spec``), the desired-instances function (``instances``), the block hash
shared by router and workers (``block_hash``), the KV prefix index
(``kv_index``) and the routing scorers (``kv_scoring``).

No I/O, no asyncio, no NATS/etcd/Kubernetes imports: everything here is
testable as plain functions.
"""
