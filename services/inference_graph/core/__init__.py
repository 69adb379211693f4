"""Pure logic shared by every role and both runtimes: the graph spec model, the
desired-instances function, and (later) block hashing and scoring maths.

No I/O, no asyncio, no NATS/etcd/Kubernetes imports: everything here is
testable as plain functions.
"""
