"""An OpenAI-compatible HTTP server for story models, with a web playground at ``/``.

Endpoints (OpenAI's request and response formats, so the official client works as is):

* ``GET  /v1/models``                 the loaded models (named after their folders)
* ``POST /v1/completions``            ``prompt`` = the beginning of a story
* ``POST /v1/chat/completions``       messages mapped to a story prompt (see `openai_api.chat_prompt`)
* ``POST /v1/internal/tokenize``      a prompt's token count and the room left (for the playground)

More routes plug in through `create_app(..., extensions=...)`: the playground's attention
view (`tinystories.interpret.attention_api`) is one.

Every prompt starts with ``<|endoftext|>`` (the start of a story). Streaming uses
server-sent events ending with ``data: [DONE]``. Extensions: ``top_k``, ``min_p`` and
``repetition_penalty`` (named as vLLM names them), and ``logprobs.token_ids`` in completions. Requests are validated by `openai_api` and batched
by `Engine` (continuous batching); bad requests get a 4xx JSON error in OpenAI's format,
and a client leaving mid-stream only drops its own rows.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import secrets
import sys
import threading
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from starlette.background import BackgroundTask
from starlette.exceptions import HTTPException as StarletteHTTPException

from tinystories.errors import FieldError, TinyStoriesError
from tinystories.infer import openai_api
from tinystories.infer.engine import Engine, Event
from tinystories.infer.openai_api import ApiError, Format, Job
from tinystories.infer.params import PRESETS, STEER_ALPHA
from tinystories.infer.sequence import Sequence as Row
from tinystories.infer.server_config import Limits
from tinystories.model.checkpoint import LoadedModel
from tinystories.model.loader import load_any

STATIC = Path(__file__).parent / "static"
Extension = Callable[[FastAPI], None]  # adds routes to the app


Direction = tuple[str, torch.Tensor]  # a hook point and a vector to add there (steering)


@dataclass
class Served:
    name: str
    loaded: LoadedModel
    engine: Engine
    created: int
    directions: dict[str, Direction] = field(default_factory=dict)  # requests steer by these names


class Mailbox:
    """Hands events from the engine threads to the event loop's queues: `post` collects them,
    `flush` (called by an engine after each step) wakes the loop once for all of them.

    A decode step emits one event per row; waking the loop once per event (a syscall, a loop
    iteration and a fight for the GIL each) cost more than handling the events at 32 rows.
    """

    def __init__(self) -> None:
        self.loop: asyncio.AbstractEventLoop | None = None  # the server's (set by `submit_rows`)
        self.lock = threading.Lock()
        self.items: list[tuple[asyncio.Queue[Any], Any]] = []
        self.wakeups = 0  # times the loop was woken: for tests and stats

    def post(self, queue: asyncio.Queue[Any], item: Any) -> None:
        """Called from any thread."""
        with self.lock:
            self.items.append((queue, item))

    def flush(self) -> None:
        """Called from any thread."""
        with self.lock:
            if not self.items or self.loop is None:
                return
            self.wakeups += 1
        self.loop.call_soon_threadsafe(self._deliver)

    def _deliver(self) -> None:
        with self.lock:
            items, self.items = self.items, []
        for queue, item in items:
            queue.put_nowait(item)


# ---------------------------------------------------------------- the app
def create_app(models: dict[str, LoadedModel], api_key: str | None = None, limits: Limits | None = None,
               extensions: Sequence[Extension] = (), directions: dict[str, dict[str, Direction]] | None = None
               ) -> FastAPI:
    """The app serving `models` (name -> model); `extensions` add more routes (see module doc).
    `directions[model][name]`: what requests to that model may steer with (the ``steer`` field).

    Routes added by extensions find the models in ``app.state.served`` and check the API key
    with ``app.state.check(request)``; `body_of` and `model_of` below are theirs to use too.
    """
    limits = limits or Limits()
    mailbox = Mailbox()
    served = {name: Served(name, lm, Engine(lm.model, lm.tokenizer, limits.max_batch,
                                            after_step=mailbox.flush, reserved=limits.reserved_slots), int(time.time()),
                             (directions or {}).get(name, {}))
              for name, lm in models.items()}

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        for s in served.values():
            s.engine.close()

    app = FastAPI(title="tinystories", lifespan=lifespan)

    def check(request: Request) -> None:
        if api_key is None:
            return
        given = request.headers.get("authorization", "")
        if not secrets.compare_digest(given.encode(), f"Bearer {api_key}".encode()):
            raise ApiError(401, "missing or wrong API key (send 'Authorization: Bearer KEY')",
                           code="invalid_api_key", kind="authentication_error")

    app.state.served, app.state.mailbox, app.state.check, app.state.limits = served, mailbox, check, limits

    # One error shape for everything the app answers: OpenAI's {"error": {...}}.
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return ApiError(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}", kind=kind).response()

    @app.exception_handler(Exception)
    async def _bug(request: Request, exc: Exception) -> JSONResponse:
        # (Starlette re-raises after this answer, and uvicorn logs the traceback: logged once.)
        return ApiError(500, f"internal error ({type(exc).__name__}); the server log has the details",
                        kind="server_error").response()

    @app.get("/v1/models")
    async def list_models(request: Request) -> dict[str, Any]:
        check(request)
        return {"object": "list", "data": [model_card(s) for s in served.values()]}

    @app.get("/v1/models/{name}")
    async def get_model(name: str, request: Request) -> dict[str, Any]:
        check(request)
        return model_card(model_of(app, {"model": name}))

    @app.post("/v1/completions")
    async def completions(request: Request) -> Any:
        body = await body_of(request)
        s = model_of(app, body)
        texts = openai_api.completion_texts(body, limits)
        j = await asyncio.to_thread(  # tokenizing is CPU work: off the event loop
            openai_api.make_job, s.name, body, texts, openai_api.completion_logprobs(body), s.loaded.tokenizer,
            s.loaded.model.cfg.context_length, limits)
        j.adds = openai_api.steering(body, s.directions)
        fmt = openai_api.CompletionFormat(j, s.loaded.tokenizer)
        return await respond(request, s, j, fmt, mailbox)

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Any:
        body = await body_of(request)
        s = model_of(app, body)
        text = openai_api.chat_prompt(body.get("messages"), limits)
        j = await asyncio.to_thread(openai_api.make_job, s.name, body, [text], openai_api.chat_logprobs(body),
                                    s.loaded.tokenizer, s.loaded.model.cfg.context_length, limits)
        j.adds = openai_api.steering(body, s.directions)
        fmt = openai_api.ChatFormat(j, s.loaded.tokenizer)
        return await respond(request, s, j, fmt, mailbox)

    @app.post("/v1/internal/tokenize")
    async def tokenize(request: Request) -> dict[str, Any]:
        """How many tokens a story beginning takes (with its start-of-story token), and how many
        new tokens still fit: the playground caps its Max tokens slider with it."""
        body = await body_of(request)
        s = model_of(app, body)
        texts = openai_api.completion_texts({"prompt": body.get("prompt", "")}, limits)
        ids = (await asyncio.to_thread(s.loaded.tokenizer.encode_stories, texts))[0]
        ctx = s.loaded.model.cfg.context_length
        return {"tokens": len(ids), "context_length": ctx, "room": max(0, ctx - len(ids))}

    for extension in extensions:
        extension(app)

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


async def body_of(request: Request) -> dict[str, Any]:
    """The request's JSON object body, after the API key check: the one place bodies are parsed.

    Refused with a 4xx: a body over the size limit, invalid JSON or UTF-8, JSON nested too deep
    to parse, a top level that is not an object, and text with lone surrogates (which no
    tokenizer can encode).
    """
    request.app.state.check(request)
    limit = request.app.state.limits.max_body_bytes
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise ApiError(413, f"request body of {declared} bytes is over the limit of {limit}", code="body_too_large")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, f"request body is over the limit of {limit} bytes", code="body_too_large")
        chunks.append(chunk)
    try:
        body = json.loads(b"".join(chunks))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"request body is not valid JSON ({exc})", code="invalid_json") from exc
    except RecursionError:
        raise ApiError(400, "request body is nested too deeply", code="invalid_json") from None
    if not isinstance(body, dict):
        raise ApiError(400, "request body must be a JSON object", code="invalid_json")
    openai_api.check_text(body)
    return body


def model_of(app: FastAPI, body: dict[str, Any]) -> Served:
    served: dict[str, Served] = app.state.served
    name = body.get("model")
    if not isinstance(name, str) or name not in served:
        raise ApiError(404, f"model {name!r} does not exist; available: {sorted(served)}",
                       "model", "model_not_found")
    return served[name]


def model_card(s: Served) -> dict[str, Any]:
    cfg, story = s.loaded.model.cfg, PRESETS["story"]
    return {"id": s.name, "object": "model", "created": s.created, "owned_by": "tinystories",
            "context_length": cfg.context_length, "n_layer": cfg.n_layer, "n_head": cfg.n_head,
            "arch": cfg.arch, "parameters": s.loaded.model.num_params(),
            # the playground's starting settings: stories to read (infer/params.py's one set of
            # defaults), by the names of the request fields they fill
            "sampling": {"temperature": story.temperature, "top_p": story.top_p, "top_k": story.top_k,
                         "min_p": story.min_p, "repetition_penalty": story.repetition_penalty,
                         "max_tokens": story.max_new_tokens, "steer_alpha": STEER_ALPHA},
            # what requests may steer with ("steer": [{"direction": name, "alpha": 4}])
            "directions": {name: hook for name, (hook, _) in sorted(s.directions.items())}}


# ---------------------------------------------------------------- running a job
Rows = tuple[asyncio.Queue[tuple[int, Event]], list[Row]]  # a job's events as they come, and its rows


def submit_rows(s: Served, j: Job, mailbox: Mailbox) -> Rows:
    """Every row of `j` given to the engine, before any answer starts: a row it refuses (a prompt
    or steering `Engine.submit` finds bad) cancels those before it and answers a 400."""
    mailbox.loop = asyncio.get_running_loop()
    post = mailbox.post
    queue: asyncio.Queue[tuple[int, Event]] = asyncio.Queue()
    rows: list[Row] = []
    job = object()  # the engine shares its batch fairly between requests
    try:
        for i, params in enumerate(j.params):
            def emit(ev: Event, i: int = i) -> None:
                post(queue, (i, ev))
            rows.append(s.engine.submit(j.prompts[i // j.n], params, emit, job, j.adds, j.logprobs))
    except Exception as exc:
        cancel(rows)
        if isinstance(exc, FieldError):
            raise openai_api.bad_field(exc) from exc
        raise
    return queue, rows


def cancel(rows: list[Row]) -> None:
    """Stop `rows` (those finished already are unchanged)."""
    for row in rows:
        row.cancel()


async def run_rows(submitted: Rows) -> AsyncGenerator[list[tuple[int, Event]], None]:
    """Batches of (choice index, event) of the submitted rows as they come.

    Events that piled up while the consumer was busy come out together (fewer writes under
    load). Leaving early (a client hung up) cancels the rows still running.
    """
    queue, rows = submitted
    left = len(rows)
    try:
        while left:
            batch = [await queue.get()]
            while not queue.empty():
                batch.append(queue.get_nowait())
            left -= sum(ev.finish_reason is not None for _, ev in batch)
            yield batch
    finally:
        cancel(rows)


def _failed(ev: Event) -> ApiError:
    if ev.finish_reason == "cancelled":
        return ApiError(503, "the server is shutting down; retry elsewhere or later", code="shutting_down",
                        kind="server_error")
    return ApiError(500, f"generation failed: {ev.error}", code="engine_error", kind="server_error")


ENDED = ("error", "cancelled")


async def respond(request: Request, s: Served, j: Job, fmt: Format, mailbox: Mailbox) -> Any:
    submitted = submit_rows(s, j, mailbox)
    if j.stream:  # (the rows are cancelled once the answer ends, also one never begun: a client gone at once)
        return StreamingResponse(stream(submitted, j, fmt), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
                                 background=BackgroundTask(cancel, submitted[1]))
    events: dict[int, list[Event]] = {i: [] for i in range(len(j.params))}

    async def collect() -> None:
        async with contextlib.aclosing(run_rows(submitted)) as batches:  # rows cancelled on any exit
            async for batch in batches:
                for i, ev in batch:
                    if ev.finish_reason in ENDED:
                        raise _failed(ev)
                    events[i].append(ev)

    task = asyncio.ensure_future(collect())
    while not task.done():  # a client that hangs up stops its rows, streamed or not
        await asyncio.wait([task], timeout=0.25)
        if not task.done() and await request.is_disconnected():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            return Response(status_code=499)  # nginx's "client closed request"; nobody reads it
    await task
    completion = sum(evs[-1].completion_tokens for evs in events.values())
    choices = [fmt.final_choice(i, "".join(e.text for e in evs), evs) for i, evs in events.items()]
    return {**fmt.header(fmt.object_name), "choices": choices, "usage": fmt.usage(completion)}


async def stream(submitted: Rows, j: Job, fmt: Format) -> AsyncIterator[str]:
    completion = [0] * len(j.params)
    async with contextlib.aclosing(run_rows(submitted)) as batches:  # rows cancelled on any exit
        async for batch in batches:
            out: list[str] = []
            for i, ev in batch:
                if ev.finish_reason in ENDED:
                    yield "".join(out) + f"data: {json.dumps(_failed(ev).body())}\n\n"
                    yield "data: [DONE]\n\n"
                    return
                completion[i] = ev.completion_tokens
                chunk = {**fmt.header(fmt.chunk_name), "choices": [fmt.chunk_choice(i, ev)]}
                out.append(f"data: {json.dumps(chunk)}\n\n")
            yield "".join(out)
    if j.include_usage:
        usage = {**fmt.header(fmt.chunk_name), "choices": [], "usage": fmt.usage(sum(completion))}
        yield f"data: {json.dumps(usage)}\n\n"
    yield "data: [DONE]\n\n"


# ---------------------------------------------------------------- entry point
def load_models(specs: list[str], device: str = "cpu") -> dict[str, LoadedModel]:
    """Models by name: `NAME=PATH`, or a path named after its run or folder (`runs/demo` and
    `runs/demo/checkpoint` are both `demo`); loaded by the one loader."""
    models: dict[str, LoadedModel] = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or not name or "/" in name:
            name, path = "", spec
        loaded = load_any(path, device, name)
        if loaded.name in models:
            raise TinyStoriesError(f"two models are named {loaded.name!r}: name them, as NAME=PATH "
                                   f"(e.g. {loaded.name}-2={path})")
        models[loaded.name] = loaded
    return models


@contextmanager
def running(app: FastAPI, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
    """Run `app` with uvicorn in a background thread (port 0 = a free one); yields its base URL."""
    import uvicorn

    from tinystories.infer.http_framing import OpenAIErrorH11Protocol

    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning", http=OpenAIErrorH11Protocol))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise TinyStoriesError(f"the server did not start on {host}:{port}")
        time.sleep(0.02)
    bound = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://{host}:{bound}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def serve(app: FastAPI, host: str = "127.0.0.1", port: int = 8000, grace_s: float = 5.0) -> None:
    """Run `app` in the foreground until SIGTERM or Ctrl-C; running requests get `grace_s`
    seconds to finish, then their rows are cancelled and their streams closed."""
    import uvicorn

    # The engine thread and the event loop share the GIL; a short switch interval keeps the
    # engine from waiting up to 5 ms for it each time a torch op hands it back.
    sys.setswitchinterval(0.0005)
    from tinystories.infer.http_framing import OpenAIErrorH11Protocol

    uvicorn.run(app, host=host, port=port, log_level="info", timeout_graceful_shutdown=math.ceil(grace_s),
                http=OpenAIErrorH11Protocol)  # malformed requests get OpenAI's error JSON too
