"""The processor role: serves ``inference_graph.processing.Processor`` on the
request plane (endpoint ``process``) and registers the model it serves."""
