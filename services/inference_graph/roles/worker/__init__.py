"""The worker role: serves one engine (``engines.base.Engine``) on the request
plane, registers its capacity in discovery once the model is loaded, and relays
the engine's KV events and load to the event plane (``service``). With
disaggregation, ``disaggregation`` adds the role's side: a decode worker's
conditional remote prefill (``remote_prefill``) or a prefill worker's queue pull
(``prefill``)."""
