"""The OpenAI-compatible HTTP app: ``create_app(processor, directory)``.

Dependencies live on ``app.state`` (``processor``, ``directory``, ``metrics``);
nothing here is module-global, so several apps can live in one process (tests).
The hot path (request decode, chunk encode) uses msgspec, not pydantic: every
route takes the raw ``Request`` and returns a ready ``Response``.
"""

from __future__ import annotations

import time

import msgspec
from fastapi import FastAPI, Request
from prometheus_client import CollectorRegistry
from starlette.responses import Response

from ...errors import ServingError, invalid_request
from . import openai_types as oa
from . import responses
from .convert import decode_chat, decode_completion, lookup_model, prepare_chat, prepare_completion
from .errors import error_response, install_handlers
from .metrics import CONTENT_TYPE_LATEST, FrontendMetrics
from .ports import ModelCard, ModelDirectory, ProcessorClient
from .sse import DeferredResponse

_encode = msgspec.json.Encoder().encode


def _json(value: object, status: int = 200) -> Response:
    return Response(_encode(value), status_code=status, media_type="application/json")


def create_app(
    processor: ProcessorClient,
    directory: ModelDirectory,
    *,
    registry: CollectorRegistry | None = None,
    title: str = "inference-graph frontend",
    remote_prefill_over: int | None = None,
) -> FastAPI:
    """Build the frontend app; metrics go to ``registry`` (a fresh one if None)."""
    app = FastAPI(title=title)
    app.state.processor = processor
    app.state.directory = directory
    app.state.metrics = FrontendMetrics(registry, remote_prefill_over)
    install_handlers(app)

    app.add_api_route("/v1/chat/completions", chat_completions, methods=["POST"])
    app.add_api_route("/v1/completions", completions, methods=["POST"])
    app.add_api_route("/v1/models", list_models, methods=["GET"])
    app.add_api_route("/v1/models/{model:path}", get_model, methods=["GET"])
    app.add_api_route("/health", health, methods=["GET"])
    app.add_api_route("/live", live, methods=["GET"])
    app.add_api_route("/metrics", metrics, methods=["GET"])
    return app


async def chat_completions(request: Request) -> Response:
    return await _generate(request, "chat_completions")


async def completions(request: Request) -> Response:
    return await _generate(request, "completions")


async def _generate(request: Request, endpoint: str) -> Response:
    t0 = time.perf_counter()
    state = request.app.state
    metrics: FrontendMetrics = state.metrics
    directory: ModelDirectory = state.directory
    body = await request.body()
    parsed: oa.ChatCompletionRequest | oa.CompletionRequest | None = None
    try:
        if endpoint == "chat_completions":
            parsed = decode_chat(body)
            prep = prepare_chat(parsed, lookup_model(directory, parsed.model))
        else:
            parsed = decode_completion(body)
            prep = prepare_completion(parsed, lookup_model(directory, parsed.model))
    except ServingError as exc:
        known = parsed is not None and parsed.model in directory.models()
        metrics.count(endpoint, parsed.model if known and parsed else "", exc.info.status)
        return error_response(exc.info)

    observer = metrics.start(endpoint, prep.model, t0)
    processor: ProcessorClient = state.processor
    if prep.kind == "chat":
        build = responses.chat_events if prep.stream else responses.chat_completion
    else:
        build = responses.completion_events if prep.stream else responses.text_completion
    return DeferredResponse(
        build(prep, processor, observer), stream=prep.stream, observer=observer, request_id=prep.id
    )


def _model_object(card: ModelCard) -> oa.ModelObject:
    return oa.ModelObject(
        id=card.name,
        created=card.created,
        owned_by=card.owned_by,
        max_model_len=card.max_model_len,
        ready=card.ready,
    )


async def list_models(request: Request) -> Response:
    """The models a request can be served for now: those with a ready worker (as vLLM's and Dynamo's
    servers list them), so a client that waits for its model here gets an answer, not a 503."""
    cards = request.app.state.directory.models()
    return _json(oa.ModelList([_model_object(c) for c in cards.values() if c.ready]))


async def get_model(request: Request, model: str) -> Response:
    card = request.app.state.directory.models().get(model)
    if card is None or not card.ready:
        message = (
            f"The model `{model}` does not exist."
            if card is None
            else f"The model `{model}` has no ready worker yet."
        )
        return error_response(invalid_request(message, "model", "model_not_found", status=404).info)
    return _json(_model_object(card))


async def health(request: Request) -> Response:
    """Ready when at least one model has a ready worker."""
    cards = request.app.state.directory.models()
    ready = sorted(name for name, card in cards.items() if card.ready)
    if ready:
        return _json({"status": "ready", "models": ready})
    return _json({"status": "not_ready", "models": []}, status=503)


async def live(request: Request) -> Response:
    return _json({"status": "alive"})


async def metrics(request: Request) -> Response:
    return Response(request.app.state.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)
