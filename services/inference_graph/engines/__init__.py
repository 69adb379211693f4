"""Engine plug-ins behind one interface (``base.Engine``): vLLM, and later a
simulated engine. The worker role knows only the interface."""
