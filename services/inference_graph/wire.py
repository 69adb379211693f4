"""Every message that crosses a process boundary, as msgspec Structs.

Rules (they keep old and new processes able to talk during a rollout):
- Structs are ``array_like``: fields are encoded by position, so new fields are
  appended last and never reordered or removed. ``tests/test_wire.py`` holds
  golden bytes for each struct and fails when a field moves.
- ``omit_defaults`` keeps the common case small; ``gc=False`` because these
  objects never form reference cycles and are created per token frame.
- No I/O here: encoding and decoding only.

Planes (subjects and keys are built in ``inference_graph.runtime.names``):
- request plane (NATS): ``ResponseFrame`` streams carrying ``GenerateOutput``
  (processor <- worker) or ``ProcessOutput`` (frontend <- processor);
- event plane (NATS): ``KvEventBatch`` and ``LoadMetrics`` per worker;
- discovery (etcd): ``InstanceInfo`` (JSON) per live instance.
"""

from __future__ import annotations

import enum
from typing import Any, Literal, TypeVar

import msgspec

_STRUCT = dict(array_like=True, omit_defaults=True, gc=False)


# ---------------------------------------------------------------- request plane


class FrameKind(enum.IntEnum):
    """What a response frame on a reply inbox means."""

    ACK = 0  # the request was accepted by ``ResponseFrame.instance_id``
    DATA = 1  # ``payload`` holds one endpoint-specific message
    END = 2  # the stream finished normally; nothing follows
    ERROR = 3  # the stream failed; ``error`` says why; nothing follows
    HEARTBEAT = 4  # the stream is alive, nothing to send yet; ``seq``: the last frame sent before it


class ErrorType(enum.StrEnum):
    """The OpenAI error ``type`` of every error a client can see, and nothing else.

    Values are the strings OpenAI's API sends; ``status`` is the HTTP status each
    is sent with unless a case says otherwise, ``retryable`` whether the same
    request may succeed later, and ``vllm`` the ``type`` vLLM's OpenAI server
    sends for that status (the openai SDK's exception class name for it). The
    table, with when each is used, is docs/errors.md.
    """

    INVALID_REQUEST = "invalid_request_error"  # 400; also 404 (unknown model or URL), 405, 422
    RATE_LIMIT = "rate_limit_error"  # 429
    SERVER_ERROR = "server_error"  # 500
    SERVICE_UNAVAILABLE = "service_unavailable_error"  # 503; also 504 (a hop did not answer in time)

    @property
    def status(self) -> int:
        return _ERROR_STATUS[self]

    @property
    def retryable(self) -> bool:
        return self in (ErrorType.RATE_LIMIT, ErrorType.SERVICE_UNAVAILABLE)

    @property
    def vllm(self) -> str:
        return _VLLM_TYPE[self]

    @classmethod
    def for_status(cls, status: int) -> ErrorType:
        """The type an error answered with HTTP ``status`` has (a 4xx or 5xx status)."""
        if status == 429:
            return cls.RATE_LIMIT
        if status in (502, 503, 504):
            return cls.SERVICE_UNAVAILABLE
        return cls.SERVER_ERROR if status >= 500 else cls.INVALID_REQUEST


_ERROR_STATUS = {
    ErrorType.INVALID_REQUEST: 400,
    ErrorType.RATE_LIMIT: 429,
    ErrorType.SERVER_ERROR: 500,
    ErrorType.SERVICE_UNAVAILABLE: 503,
}
_VLLM_TYPE = {
    ErrorType.INVALID_REQUEST: "BadRequestError",
    ErrorType.RATE_LIMIT: "Too Many Requests",
    ErrorType.SERVER_ERROR: "InternalServerError",
    ErrorType.SERVICE_UNAVAILABLE: "ServiceUnavailableError",
}


class ErrorInfo(msgspec.Struct, **_STRUCT):
    """The one error frame: what a client will see, on every process boundary.

    Built only by ``inference_graph.errors`` (``ServingError.info``). ``status``
    is the HTTP status the frontend answers with; ``retryable`` whether the same
    request may succeed later (an older peer leaves it False). An older peer
    that sent a type outside ``ErrorType`` cannot be decoded.
    """

    status: int
    type: ErrorType
    message: str
    param: str | None = None
    code: str | None = None
    retryable: bool = False


class ResponseFrame(msgspec.Struct, **_STRUCT):
    """One message of a streamed response, sent to the caller's reply inbox."""

    kind: FrameKind
    seq: int
    payload: bytes = b""
    error: ErrorInfo | None = None
    instance_id: str = ""


class CancelRequest(msgspec.Struct, **_STRUCT):
    """Sent by a caller to the serving instance's control subject to stop a stream."""

    request_id: str


# ---------------------------------------------------------------- discovery


class InstanceInfo(msgspec.Struct, omit_defaults=True):
    """What a live instance publishes under its etcd lease (JSON, keyed by name)."""

    instance_id: str
    namespace: str
    component: str  # role: frontend | processor | router | decode | prefill
    model: str = ""
    subject: str = ""  # base NATS subject of the instance's endpoints
    block_size: int = 0
    num_kv_blocks: int = 0
    max_model_len: int = 0
    tensor_parallel_size: int = 1
    host: str = ""
    pid: int = 0
    started_at: float = 0.0
    metadata: dict[str, str] = {}
    kv_side_channel_host: str = ""  # where a KV connector (NIXL) reaches this worker's engine
    kv_side_channel_port: int = 0
    draining: bool = False  # leaving: route nothing new here; its streams in flight still finish


# ---------------------------------------------------------------- processor <-> worker


class SamplingOptions(msgspec.Struct, **_STRUCT):
    """The engine-side sampling parameters (vLLM's SamplingParams subset we pass on).

    Stop *strings* are not here: the processor matches them on detokenized text
    and cancels the worker stream.
    """

    max_tokens: int = 16
    min_tokens: int = 0
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 or -1: disabled
    seed: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    stop_token_ids: list[int] = []
    ignore_eos: bool = False
    logprobs: int | None = None  # None: none; k >= 0: sampled token plus top k


class Phase(enum.IntEnum):
    """Which part of a request an engine runs (explicit, never inferred from max_tokens)."""

    AGGREGATED = 0  # prefill and decode on this engine
    PREFILL = 1  # prefill only, keep the KV for a remote decode; the output carries kv_transfer_params
    DECODE = 2  # decode from KV prefilled elsewhere, named by kv_transfer_params


class GenerateRequest(msgspec.Struct, **_STRUCT):
    """Processor -> worker: generate from token ids."""

    request_id: str
    token_ids: list[int]
    sampling: SamplingOptions
    model: str = ""
    phase: Phase = Phase.AGGREGATED
    kv_transfer_params: dict[str, Any] | None = None  # the connector's (PREFILL output -> DECODE input)


class TokenLogprob(msgspec.Struct, **_STRUCT):
    """Log-probability of one generated token and the top alternatives."""

    token_id: int
    logprob: float
    top: list[tuple[int, float]] = []


class GenerateOutput(msgspec.Struct, **_STRUCT):
    """Worker -> processor: the tokens produced since the previous frame.

    A frame may carry several tokens (per-message overhead decides throughput).
    ``finish_reason`` is set on the last frame: "stop" (EOS or stop token),
    "length" or "abort".
    """

    token_ids: list[int]
    finish_reason: str | None = None
    num_prompt_tokens: int = 0
    num_cached_tokens: int = 0
    logprobs: list[TokenLogprob] | None = None
    stop_token_id: int | None = None
    kv_transfer_params: dict[str, Any] | None = None  # set on a PREFILL request's last frame


# ---------------------------------------------------------------- frontend <-> processor


class ChatMessage(msgspec.Struct, **_STRUCT):
    role: str
    content: str | None = None
    name: str | None = None


class ProcessRequest(msgspec.Struct, **_STRUCT):
    """Frontend -> processor: one validated OpenAI request, normalised.

    Exactly one of ``messages`` (chat) and ``prompt`` (completion) is set; a
    completion prompt is text or token ids.
    """

    request_id: str
    model: str
    kind: Literal["chat", "completion"]
    sampling: SamplingOptions
    messages: list[ChatMessage] | None = None
    prompt: str | list[int] | None = None
    stop: list[str] = []
    n: int = 1
    echo: bool = False
    include_stop_str_in_output: bool = False
    skip_special_tokens: bool = True
    add_generation_prompt: bool = True
    chat_template_kwargs: dict[str, bool | int | float | str] = {}


class TextLogprob(msgspec.Struct, **_STRUCT):
    """One generated token's log-probability, detokenized for OpenAI's format."""

    token: str
    logprob: float
    bytes: list[int] | None = None
    top: list[tuple[str, float, list[int] | None]] = []


class Usage(msgspec.Struct, **_STRUCT):
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0
    migrations: int = 0  # times the choice moved to another worker (not shown to clients; a metric)


class ProcessOutput(msgspec.Struct, **_STRUCT):
    """Processor -> frontend: new text for one choice.

    The last frame of a choice has ``finish_reason`` set ("stop", "length",
    "abort") and ``usage`` for that choice.
    """

    index: int
    text: str
    num_tokens: int = 0
    finish_reason: str | None = None
    stop_reason: str | int | None = None  # matched stop string or stop token id
    logprobs: list[TextLogprob] | None = None
    usage: Usage | None = None


# ---------------------------------------------------------------- event plane


class BlockStored(msgspec.Struct, tag=True, **_STRUCT):
    """Blocks entered an engine's prefix cache.

    ``block_hashes`` are the engine's own hashes (normalised to unsigned 64-bit);
    ``token_ids`` are the tokens of all stored blocks in order, so consumers can
    compute their own engine-independent hash chain.
    """

    block_hashes: list[int]
    parent_block_hash: int | None
    token_ids: list[int]
    block_size: int


class BlockRemoved(msgspec.Struct, tag=True, **_STRUCT):
    block_hashes: list[int]


class AllBlocksCleared(msgspec.Struct, tag=True, **_STRUCT):
    pass


KvEvent = BlockStored | BlockRemoved | AllBlocksCleared


class KvEventBatch(msgspec.Struct, **_STRUCT):
    """KV cache events of one worker, numbered so consumers can detect gaps."""

    instance_id: str
    seq: int
    timestamp: float
    events: list[KvEvent]


class LoadMetrics(msgspec.Struct, **_STRUCT):
    """A worker's load, published periodically on the event plane."""

    instance_id: str
    timestamp: float
    running: int
    waiting: int
    kv_usage: float  # fraction of KV blocks in use, 0..1
    num_kv_blocks: int = 0
    prefill_queue_depth: int = -1  # requests waiting in the prefill queue; -1: not disaggregated
    local_prefills: int = 0  # decode worker: prefills run here (since start)
    remote_prefills: int = 0  # decode worker: prefills done by prefill workers
    kv_transfer_failures: int = 0  # decode worker: remote prefills whose KV could not be used


# ---------------------------------------------------------------- codecs

encoder = msgspec.msgpack.Encoder()
_T = TypeVar("_T")


def decoder(type_: type[_T]) -> msgspec.msgpack.Decoder[_T]:
    """A typed decoder; build one per subscription, not per message."""
    return msgspec.msgpack.Decoder(type_)


# ---------------------------------------------------------------- router (KV-aware routing)


class RouteRequest(msgspec.Struct, **_STRUCT):
    """Processor -> router ``decide``: which of ``workers`` should serve a prompt of ``token_ids``."""

    token_ids: list[int]
    workers: list[str]


class RouteDecision(msgspec.Struct, **_STRUCT):
    """The router's answer: the chosen worker and the prefix it is expected to have cached."""

    worker: str
    expected_hit_tokens: int = 0
    overlap_blocks: int = 0


# ---------------------------------------------------------------- disaggregation (prefill queue)


class PrefillRequest(msgspec.Struct, **_STRUCT):
    """Decode worker -> prefill queue (JetStream): prefill ``token_ids`` and tell ``decode_instance_id``."""

    request_id: str
    token_ids: list[int]
    sampling: SamplingOptions
    decode_instance_id: str
    deadline: float  # unix time after which the decode worker no longer waits (prefill locally)
    model: str = ""


class PrefillResult(msgspec.Struct, **_STRUCT):
    """Prefill worker -> the decode worker that queued the request: where its KV is."""

    request_id: str
    prefill_instance_id: str
    kv_transfer_params: dict[str, Any] | None = None
    error: ErrorInfo | None = None


class ReceiptStatus(enum.IntEnum):
    HELD = 0  # the decode worker holds the KV (its engine pulled it); the queue message can be acked
    UNKNOWN = 1  # nobody waits for this request any more (done locally, cancelled, or a redelivery)
    FAILED = 2  # the decode worker could not use the KV


class PrefillReceipt(msgspec.Struct, **_STRUCT):
    """Decode worker -> prefill worker, the reply to a ``PrefillResult``."""

    status: ReceiptStatus
