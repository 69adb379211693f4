"""The planner role: measures the graph each interval and decides prefill/decode replicas."""
