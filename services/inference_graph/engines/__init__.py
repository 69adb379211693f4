"""Engine plug-ins behind one interface (``base.Engine``): vLLM (``vllm_engine``) and the
simulated engine (``mocker``), picked by ``factory.create_engine`` from ``spec.engine.type``; KV
transports behind ``kv_transfer`` (NIXL through vLLM's connector, or simulated). The worker role
knows only the interfaces."""
