"""The local runtime: runs an InferenceGraph manifest as processes on one machine,
with embedded NATS and etcd when no external ones are configured."""
