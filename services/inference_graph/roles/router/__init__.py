"""The KV-aware router role: indexes the decode workers' KV cache events and
answers the processor's ``decide`` (which worker holds most of this prompt's
prefix, without overloading it) on the request plane."""
