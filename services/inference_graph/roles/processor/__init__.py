"""The processor role: OpenAI requests as text in, token ids to workers, text frames out.

It applies the model's chat template and tokenizer, checks the context length,
routes each request to a decode worker (``routing``), streams the worker's
token ids back as text deltas (``detokenizer``), and applies stop strings
(``stop``). Its I/O boundaries are the Protocols in ``ports``; everything else
here is pure logic over ``wire`` messages. Imports ``wire`` and ``core`` only.
"""

from .errors import ProcessingError, WorkerError, WorkerUnreachable
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
    "ProcessingError",
    "Processor",
    "PromptTokenizer",
    "RandomStrategy",
    "RoundRobinStrategy",
    "RouterUnavailable",
    "RoutingStrategy",
    "WorkerClient",
    "WorkerDirectory",
    "WorkerError",
    "WorkerUnreachable",
    "make_strategy",
]
