"""An OpenAI-compatible HTTP server for story models, with a web playground at ``/``.

Endpoints (OpenAI's request and response formats, so the official client works as is):

* ``GET  /v1/models``                 the loaded models (named after their folders)
* ``POST /v1/completions``            ``prompt`` = the beginning of a story
* ``POST /v1/chat/completions``       messages mapped to a story prompt (see `chat_prompt`)
* ``POST /v1/internal/attention``     attention weights of one token (for the playground)

Every prompt starts with ``<|endoftext|>`` (the start of a story). Streaming uses
server-sent events ending with ``data: [DONE]``. Extensions: ``top_k``, and
``logprobs.token_ids`` in completions. Reported log-probabilities are the model's own
(temperature 1, before top-k/top-p), whatever sampling settings the request uses.
Requests are batched by `Engine` (continuous batching); bad requests get a 4xx JSON
error in OpenAI's format, and a client leaving mid-stream only drops its own rows.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles

from tinystories.errors import TinyStoriesError
from tinystories.infer.engine import Engine, Event, RowParams
from tinystories.model.checkpoint import LoadedModel

STATIC = Path(__file__).parent / "static"
MAX_N = 16
MAX_LOGPROBS = 5
MAX_STOPS = 4


class ApiError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None,
                 code: str | None = None, kind: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind

    def response(self) -> JSONResponse:
        return JSONResponse({"error": {"message": self.message, "type": self.kind, "param": self.param,
                                       "code": self.code}}, status_code=self.status)


@dataclass
class Served:
    name: str
    loaded: LoadedModel
    engine: Engine
    created: int


# ---------------------------------------------------------------- request validation
def _field(body: dict[str, Any], key: str, kind: type | tuple[type, ...], default: Any,
           lo: float | None = None, hi: float | None = None) -> Any:
    value = body.get(key, default)
    if value is None:
        return default
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):  # True is an int
        names = "/".join(t.__name__ for t in kinds)
        raise ApiError(400, f"'{key}' must be a {names}, got {value!r}", key, "invalid_type")
    if isinstance(value, (int, float)) and (  # bounds are only given for numeric kinds
            (lo is not None and value < lo) or (hi is not None and value > hi)):
        raise ApiError(400, f"'{key}' must be between {lo} and {hi}, got {value}", key, "invalid_value")
    return value


def _stops(body: dict[str, Any]) -> list[str]:
    stop = body.get("stop")
    if stop is None:
        return []
    stops = [stop] if isinstance(stop, str) else stop
    if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops) or len(stops) > MAX_STOPS:
        raise ApiError(400, f"'stop' must be a non-empty string or a list of at most {MAX_STOPS} of them",
                       "stop", "invalid_value")
    return stops


def chat_prompt(messages: Any) -> str:
    """The story text a chat conversation stands for.

    A story model follows no instructions, so the conversation is read as one story
    written turn by turn: user and assistant contents are joined in order (with a
    space), system/developer messages are ignored, and the reply continues the story.
    """
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "'messages' must be a non-empty list of {role, content} objects", "messages")
    parts = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ("system", "developer", "user", "assistant"):
            raise ApiError(400, f"messages[{i}] needs a role of system, developer, user or assistant",
                           f"messages[{i}].role")
        content = m.get("content") or ""
        if isinstance(content, list):  # [{"type": "text", "text": ...}, ...]
            if not all(isinstance(p, dict) and p.get("type") == "text" for p in content):
                raise ApiError(400, f"messages[{i}]: only text content is supported", f"messages[{i}].content")
            content = "".join(str(p.get("text", "")) for p in content)
        if not isinstance(content, str):
            raise ApiError(400, f"messages[{i}].content must be a string", f"messages[{i}].content")
        if m["role"] in ("user", "assistant") and content.strip():
            parts.append(content.strip())
    return " ".join(parts)


class Mailbox:
    """Hands events from the engine threads to the event loop's queues: `post` collects them,
    `flush` (called by an engine after each step) wakes the loop once for all of them.

    A decode step emits one event per row; waking the loop once per event (a syscall, a loop
    iteration and a fight for the GIL each) cost more than handling the events at 32 rows.
    """

    def __init__(self) -> None:
        self.loop: asyncio.AbstractEventLoop | None = None  # the server's (set by `run_rows`)
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


@dataclass
class Job:
    """A validated request: one row per (prompt, choice)."""
    served: Served
    prompts: list[list[int]]
    n: int
    params: list[RowParams]
    stream: bool
    include_usage: bool
    mailbox: Mailbox


# ---------------------------------------------------------------- the app
def create_app(models: dict[str, LoadedModel], api_key: str | None = None, max_batch: int = 64) -> FastAPI:
    mailbox = Mailbox()
    served = {name: Served(name, lm, Engine(lm, max_batch, after_step=mailbox.flush), int(time.time()))
              for name, lm in models.items()}

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        for s in served.values():
            s.engine.close()

    app = FastAPI(title="tinystories", lifespan=lifespan)
    app.state.served, app.state.mailbox = served, mailbox

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return exc.response()

    def check(request: Request) -> None:
        if api_key is None:
            return
        given = request.headers.get("authorization", "")
        if not secrets.compare_digest(given.encode(), f"Bearer {api_key}".encode()):
            raise ApiError(401, "missing or wrong API key (send 'Authorization: Bearer KEY')",
                           code="invalid_api_key", kind="authentication_error")

    async def body_of(request: Request) -> dict[str, Any]:
        check(request)
        raw = await request.body()
        try:
            body = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ApiError(400, f"request body is not valid JSON ({exc})", code="invalid_json") from exc
        if not isinstance(body, dict):
            raise ApiError(400, "request body must be a JSON object", code="invalid_json")
        return body

    def model_of(body: dict[str, Any]) -> Served:
        name = body.get("model")
        if not isinstance(name, str) or name not in served:
            raise ApiError(404, f"model {name!r} does not exist; available: {sorted(served)}",
                           "model", "model_not_found")
        return served[name]

    def job(body: dict[str, Any], texts: list[str], logprobs: int) -> Job:
        s = model_of(body)
        tok, ctx = s.loaded.tokenizer, s.loaded.model.cfg.context_length
        n = _field(body, "n", int, 1, 1, MAX_N)
        max_tokens = _field(body, "max_tokens", int, None, 1, None)
        if "max_completion_tokens" in body:
            max_tokens = _field(body, "max_completion_tokens", int, None, 1, None)
        seed = _field(body, "seed", int, None)
        prompts = [[tok.eos_id, *tok.encode(t)] for t in texts]
        longest = max(len(p) for p in prompts)
        budget = max_tokens if max_tokens is not None else ctx - longest
        if longest >= ctx:
            raise ApiError(400, f"this model's maximum context length is {ctx} tokens, but the prompt alone "
                           f"has {longest} (with the start-of-story token): shorten the prompt",
                           "prompt", "context_length_exceeded")
        if longest + budget > ctx:
            raise ApiError(400, f"this model's maximum context length is {ctx} tokens, but {longest + budget} "
                           f"were requested ({longest} in the prompt, {budget} for the completion); "
                           "shorten the prompt or lower max_tokens", "max_tokens", "context_length_exceeded")
        base = {"temperature": _field(body, "temperature", (int, float), 1.0, 0, 2),
                    "top_p": _field(body, "top_p", (int, float), 1.0, 0, 1),
                    "top_k": _field(body, "top_k", int, 0, 0, None), "stop": _stops(body), "logprobs": logprobs}
        if base["top_p"] == 0:
            raise ApiError(400, "'top_p' must be greater than 0", "top_p", "invalid_value")
        params = [RowParams(max_new_tokens=budget, seed=None if seed is None else seed + i, **base)
                  for i in range(len(prompts) * n)]
        stream = _field(body, "stream", bool, False)
        options = body.get("stream_options") or {}
        include_usage = bool(isinstance(options, dict) and options.get("include_usage"))
        return Job(s, prompts, n, params, stream, include_usage, mailbox)

    @app.get("/v1/models")
    async def list_models(request: Request) -> dict[str, Any]:
        check(request)
        return {"object": "list", "data": [model_card(s) for s in served.values()]}

    @app.get("/v1/models/{name}")
    async def get_model(name: str, request: Request) -> dict[str, Any]:
        check(request)
        return model_card(model_of({"model": name}))

    @app.post("/v1/completions")
    async def completions(request: Request) -> Any:
        body = await body_of(request)
        prompt = body.get("prompt", "")
        texts = [prompt] if isinstance(prompt, str) else prompt
        if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
            raise ApiError(400, "'prompt' must be a string or a non-empty list of strings", "prompt")
        if body.get("echo"):
            raise ApiError(400, "'echo' is not supported", "echo")
        j = job(body, texts, _field(body, "logprobs", int, 0, 0, MAX_LOGPROBS))
        fmt = CompletionFormat(j, "logprobs" in body and body["logprobs"] is not None)
        return await respond(j, fmt)

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Any:
        body = await body_of(request)
        text = chat_prompt(body.get("messages"))
        want = _field(body, "logprobs", bool, False)
        top = _field(body, "top_logprobs", int, 0, 0, MAX_LOGPROBS)
        j = job(body, [text], top if want else 0)
        return await respond(j, ChatFormat(j, want))

    @app.post("/v1/internal/attention")
    async def attention(request: Request) -> dict[str, Any]:
        body = await body_of(request)
        s = model_of(body)
        prompt = body.get("prompt", "")
        extra = body.get("completion_token_ids") or []
        vocab = s.loaded.model.cfg.vocab_size
        if not isinstance(prompt, str) or not isinstance(extra, list) or \
                not all(isinstance(i, int) and 0 <= i < vocab for i in extra):
            raise ApiError(400, "needs 'prompt' (string) and optional 'completion_token_ids' (token ids)")
        ids = [s.loaded.tokenizer.eos_id, *s.loaded.tokenizer.encode(prompt), *extra]
        ctx = s.loaded.model.cfg.context_length
        if len(ids) > ctx:
            raise ApiError(400, f"{len(ids)} tokens exceed the model's context of {ctx}", "prompt",
                           "context_length_exceeded")
        pos = _field(body, "position", int, len(ids) - 1, 0, len(ids) - 1)
        weights = await asyncio.to_thread(attention_row, s.loaded, ids, pos)
        return {"tokens": s.loaded.tokenizer.token_strings(ids), "token_ids": ids, "position": pos,
                "n_layer": len(weights), "n_head": len(weights[0]), "attention": weights}

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


def model_card(s: Served) -> dict[str, Any]:
    cfg = s.loaded.model.cfg
    return {"id": s.name, "object": "model", "created": s.created, "owned_by": "tinystories",
            "context_length": cfg.context_length, "n_layer": cfg.n_layer, "n_head": cfg.n_head,
            "arch": cfg.arch, "parameters": s.loaded.model.num_params()}


def attention_row(loaded: LoadedModel, ids: list[int], pos: int) -> list[list[list[float]]]:
    """Attention of token `pos` over tokens 0..pos, per layer and head: [layer][head][pos+1]."""
    from tinystories.interpret.hooks import run_with_cache

    model = loaded.model
    idx = torch.tensor([ids[:pos + 1]], device=model.tok_emb.weight.device)
    with torch.inference_mode():
        _, cache = run_with_cache(model, idx)
    return cache.stack("attn")[:, 0, :, pos, :].float().cpu().tolist()


# ---------------------------------------------------------------- running a job
async def run_rows(j: Job) -> AsyncIterator[list[tuple[int, Event]]]:
    """Submit every row of `j`; yield batches of (choice index, event) as they come.

    Events that piled up while the consumer was busy come out together (fewer writes under
    load). Leaving early (a client hung up) cancels the rows still running.
    """
    j.mailbox.loop = asyncio.get_running_loop()
    post = j.mailbox.post
    queue: asyncio.Queue[tuple[int, Event]] = asyncio.Queue()
    rows = []
    for i, params in enumerate(j.params):
        def emit(ev: Event, i: int = i) -> None:
            post(queue, (i, ev))
        rows.append(j.served.engine.submit(j.prompts[i // j.n], params, emit))
    left = len(rows)
    try:
        while left:
            batch = [await queue.get()]
            while not queue.empty():
                batch.append(queue.get_nowait())
            left -= sum(ev.finish_reason is not None for _, ev in batch)
            yield batch
    finally:
        for row in rows:
            row.cancel()


class Format:
    """How a job's events become OpenAI JSON: one subclass per endpoint."""
    object_name = ""
    chunk_name = ""
    prefix = ""

    def __init__(self, j: Job, logprobs: bool) -> None:
        self.j, self.logprobs = j, logprobs
        self.id = f"{self.prefix}-{secrets.token_hex(12)}"
        self.created = int(time.time())
        self.tok = j.served.loaded.tokenizer
        self.offsets = [0] * len(j.params)

    def header(self, name: str) -> dict[str, Any]:
        return {"id": self.id, "object": name, "created": self.created, "model": self.j.served.name}

    def usage(self, completion: int) -> dict[str, int]:
        prompt = sum(len(p) for p in self.j.prompts)
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

    def chunk_choice(self, i: int, ev: Event) -> dict[str, Any]:
        raise NotImplementedError

    def final_choice(self, i: int, text: str, events: list[Event]) -> dict[str, Any]:
        raise NotImplementedError


class CompletionFormat(Format):
    object_name, chunk_name, prefix = "text_completion", "text_completion", "cmpl"

    def _logprobs(self, i: int, events: list[Event]) -> dict[str, Any] | None:
        if not self.logprobs:
            return None
        ids = [t for ev in events for t in ev.token_ids]
        tokens = self.tok.token_strings(ids)
        offsets = []
        for t in tokens:
            offsets.append(self.offsets[i])
            self.offsets[i] += len(t)
        return {"tokens": tokens, "token_logprobs": [lp for ev in events for lp in ev.logprobs],
                "top_logprobs": [{self.tok.decode([k]): v for k, v in top.items()}
                                 for ev in events for top in ev.top_logprobs],
                "text_offset": offsets, "token_ids": ids}

    def chunk_choice(self, i: int, ev: Event) -> dict[str, Any]:
        return {"index": i, "text": ev.text, "logprobs": self._logprobs(i, [ev]),
                "finish_reason": ev.finish_reason}

    def final_choice(self, i: int, text: str, events: list[Event]) -> dict[str, Any]:
        return {"index": i, "text": text, "logprobs": self._logprobs(i, events),
                "finish_reason": events[-1].finish_reason}


class ChatFormat(Format):
    object_name, chunk_name, prefix = "chat.completion", "chat.completion.chunk", "chatcmpl"

    def __init__(self, j: Job, logprobs: bool) -> None:
        super().__init__(j, logprobs)
        self.started: set[int] = set()

    def _logprobs(self, events: list[Event]) -> dict[str, Any] | None:
        if not self.logprobs:
            return None

        def entry(token_id: int, lp: float) -> dict[str, Any]:
            text = self.tok.decode([token_id])
            return {"token": text, "logprob": lp, "bytes": list(text.encode())}

        return {"content": [{**entry(t, lp), "top_logprobs": [entry(k, v) for k, v in top.items()]}
                            for ev in events
                            for t, lp, top in zip(ev.token_ids, ev.logprobs, ev.top_logprobs)]}

    def chunk_choice(self, i: int, ev: Event) -> dict[str, Any]:
        delta: dict[str, Any] = {"content": ev.text} if ev.text or ev.finish_reason is None else {}
        if i not in self.started:
            self.started.add(i)
            delta = {"role": "assistant", "content": ev.text}
        return {"index": i, "delta": delta, "logprobs": self._logprobs([ev]), "finish_reason": ev.finish_reason}

    def final_choice(self, i: int, text: str, events: list[Event]) -> dict[str, Any]:
        return {"index": i, "message": {"role": "assistant", "content": text},
                "logprobs": self._logprobs(events), "finish_reason": events[-1].finish_reason}


def _engine_failed(ev: Event) -> ApiError:
    return ApiError(500, f"generation failed: {ev.text}", code="engine_error", kind="server_error")


async def respond(j: Job, fmt: Format) -> Any:
    if j.stream:
        return StreamingResponse(stream(j, fmt), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    events: dict[int, list[Event]] = {i: [] for i in range(len(j.params))}
    async for batch in run_rows(j):
        for i, ev in batch:
            if ev.finish_reason == "error":
                raise _engine_failed(ev)
            events[i].append(ev)
    completion = sum(evs[-1].completion_tokens for evs in events.values())
    choices = [fmt.final_choice(i, "".join(e.text for e in evs), evs) for i, evs in events.items()]
    return {**fmt.header(fmt.object_name), "choices": choices, "usage": fmt.usage(completion)}


async def stream(j: Job, fmt: Format) -> AsyncIterator[str]:
    completion = [0] * len(j.params)
    async for batch in run_rows(j):
        out: list[str] = []
        for i, ev in batch:
            if ev.finish_reason == "error":
                yield "".join(out) + f"data: {bytes(_engine_failed(ev).response().body).decode()}\n\n"
                yield "data: [DONE]\n\n"
                return
            completion[i] = ev.completion_tokens
            out.append(f"data: {json.dumps({**fmt.header(fmt.chunk_name), 'choices': [fmt.chunk_choice(i, ev)]})}\n\n")
        yield "".join(out)
    if j.include_usage:
        usage = {**fmt.header(fmt.chunk_name), "choices": [], "usage": fmt.usage(sum(completion))}
        yield f"data: {json.dumps(usage)}\n\n"
    yield "data: [DONE]\n\n"


# ---------------------------------------------------------------- entry point
def load_models(folders: list[str], device: str = "cpu") -> dict[str, LoadedModel]:
    """Model folders (ours or transformers) or cached Hub ids, named after their last path part."""
    from tinystories.model.checkpoint import load_any
    from tinystories.model.hf import load_hf_model

    models: dict[str, LoadedModel] = {}
    for folder in folders:
        name = Path(folder).resolve().name
        if name in models:
            raise TinyStoriesError(f"two models are named {name!r} (models are named after their folders); "
                                   "rename one folder")
        models[name] = load_any(folder, device) if Path(folder).exists() else load_hf_model(folder, device)
    return models


@contextmanager
def running(app: FastAPI, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
    """Run `app` with uvicorn in a background thread (port 0 = a free one); yields its base URL."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning"))
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


def serve(folders: list[str], host: str = "127.0.0.1", port: int = 8000, api_key: str | None = None,
          device: str = "cpu", max_batch: int = 64) -> None:
    import uvicorn

    # The engine thread and the event loop share the GIL; a short switch interval keeps the
    # engine from waiting up to 5 ms for it each time a torch op hands it back.
    sys.setswitchinterval(0.0005)
    app = create_app(load_models(folders, device), api_key, max_batch)
    uvicorn.run(app, host=host, port=port, log_level="info")
