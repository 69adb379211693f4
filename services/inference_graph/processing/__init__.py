"""Request processing: OpenAI requests as text in, token ids to workers, text frames out.

The processor role serves this over the request plane; a frontend whose graph
runs no processor replicas (``services.processor.replicas: 0``) hosts it
in-process and saves a hop per token. It applies the model's chat template and tokenizer, checks the context length,
routes each request to a decode worker (``routing``), streams the worker's
token ids back as text deltas (``detokenizer``), and applies stop strings
(``stop``). Its I/O boundaries are the Protocols in ``ports``; everything else
here is pure logic over ``wire`` messages. ``remote`` holds the adapters of those ports to the runtime (NATS, etcd) and
``build`` assembles a processor from a graph.
"""

from .errors import WorkerUnreachable
from .ports import WorkerClient, WorkerDirectory
from .processor import Processor
from .routing import (
    STRATEGIES,
    KvRouterStrategy,
    RandomStrategy,
    RoundRobinStrategy,
    RouterUnavailable,
    RoutingStrategy,
    make_strategy,
)
from .tokenization import PromptTokenizer

__all__ = [
    "STRATEGIES",
    "KvRouterStrategy",
    "Processor",
    "PromptTokenizer",
    "RandomStrategy",
    "RoundRobinStrategy",
    "RouterUnavailable",
    "RoutingStrategy",
    "WorkerClient",
    "WorkerDirectory",
    "WorkerUnreachable",
    "make_strategy",
]
