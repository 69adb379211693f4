"""The processor streams of one HTTP request, as one stream of ``(offset, frame)``.

A batched completion (``prompt`` is a list) becomes one ``ProcessRequest`` per
prompt; the choice index OpenAI reports is ``offset + frame.index`` with
``offset = prompt_position * n``. Closing the returned generator closes every
processor stream it opened.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator

from inference_graph import wire

from .ports import ProcessorClient

_END = object()


async def aclose(iterator: AsyncIterator[object]) -> None:
    close = getattr(iterator, "aclose", None)
    if close is not None:
        await close()


async def frames(
    processor: ProcessorClient, requests: list[wire.ProcessRequest], n: int
) -> AsyncGenerator[tuple[int, wire.ProcessOutput], None]:
    if len(requests) == 1:
        stream = processor.process(requests[0])
        try:
            async for frame in stream:
                yield 0, frame
        finally:
            await aclose(stream)
        return

    queue: asyncio.Queue[tuple[int, object]] = asyncio.Queue()

    async def pump(offset: int, request: wire.ProcessRequest) -> None:
        stream = processor.process(request)
        try:
            async for frame in stream:
                queue.put_nowait((offset, frame))
        except Exception as exc:
            queue.put_nowait((offset, exc))
        else:
            queue.put_nowait((offset, _END))
        finally:
            await aclose(stream)

    tasks = [asyncio.ensure_future(pump(k * n, r)) for k, r in enumerate(requests)]
    running = len(tasks)
    try:
        while running:
            offset, item = await queue.get()
            if item is _END:
                running -= 1
            elif isinstance(item, Exception):
                raise item
            else:
                assert isinstance(item, wire.ProcessOutput)
                yield offset, item
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
