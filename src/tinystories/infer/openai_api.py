"""OpenAI's completions and chat formats: requests validated into jobs, events into responses.

Kept apart from the routes (`infer/server.py`) so the rules are in one place: a request
either becomes a `Job` of rows, each with validated `SamplingParams`, or an `ApiError` with a
4xx status in OpenAI's error shape. Reported log-probabilities are the model's own
(temperature 1, before top-k/top-p), whatever sampling settings the request uses.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from typing import Any

import torch
from fastapi.responses import JSONResponse

from tinystories.errors import FieldError
from tinystories.infer.params import MAX_LOGPROBS, MAX_STOPS, PRESETS, STEER_ALPHA, SamplingParams
from tinystories.infer.sequence import Event
from tinystories.infer.server_config import Limits
from tinystories.tokenizer import Tokenizer

MAX_N = 16


class ApiError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None,
                 code: str | None = None, kind: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status)


# Our fields whose request field has another name: the rest are `SamplingParams`' own.
REQUEST_FIELDS = {f"{SamplingParams.where}.max_new_tokens": "max_tokens", "adds": "steer"}


def bad_field(exc: FieldError) -> ApiError:
    """A 400 for a field that `SamplingParams` or `Engine.submit` refused, naming the request's
    field (``top_p``, ``prompt``, ``steer``) from the error's own field and code."""
    prefix = f"{SamplingParams.where}."
    param = REQUEST_FIELDS.get(exc.field, exc.field.removeprefix(prefix))
    return ApiError(400, str(exc).removeprefix(prefix), param, exc.code)


def field(body: dict[str, Any], key: str, kind: type | tuple[type, ...], default: Any,
          lo: float | None = None, hi: float | None = None) -> Any:
    """`body[key]` if it has the right JSON type (and range), `default` if absent, else a 400."""
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


def stops(body: dict[str, Any]) -> list[str]:
    stop = body.get("stop")
    if stop is None:
        return []
    items = [stop] if isinstance(stop, str) else stop
    if not isinstance(items, list) or not all(isinstance(s, str) and s for s in items) or len(items) > MAX_STOPS:
        raise ApiError(400, f"'stop' must be a non-empty string or a list of at most {MAX_STOPS} of them",
                       "stop", "invalid_value")
    return items


def check_text(body: Any) -> None:
    """Every string in a request must be valid Unicode: JSON can carry a lone surrogate
    (``"\\ud800"``), which no tokenizer can encode."""
    todo = [body]
    while todo:
        item = todo.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError as exc:
                raise ApiError(400, f"text contains a lone surrogate ({item[exc.start]!r} at character "
                                    f"{exc.start}); send valid Unicode", code="invalid_text") from None
        elif isinstance(item, dict):
            todo += [*item.keys(), *item.values()]
        elif isinstance(item, list):
            todo += item


def _check_size(texts: list[str], limits: Limits, param: str) -> None:
    size = sum(len(t.encode("utf-8")) for t in texts)
    if size > limits.max_prompt_bytes:
        raise ApiError(400, f"the prompt text is {size} bytes, over this server's limit of "
                            f"{limits.max_prompt_bytes} (far beyond any story model's context)", param,
                       "prompt_too_large")


def chat_prompt(messages: Any, limits: Limits | None = None) -> str:
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
    if limits is not None:
        _check_size(parts, limits, "messages")
    return " ".join(parts)


def completion_texts(body: dict[str, Any], limits: Limits) -> list[str]:
    prompt = body.get("prompt", "")
    texts = [prompt] if isinstance(prompt, str) else prompt
    if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
        raise ApiError(400, "'prompt' must be a string or a non-empty list of strings", "prompt")
    if len(texts) > limits.max_prompts:
        raise ApiError(400, f"{len(texts)} prompts in one request; this server takes at most {limits.max_prompts}",
                       "prompt", "too_many_prompts")
    _check_size(texts, limits, "prompt")
    if body.get("echo"):
        raise ApiError(400, "'echo' is not supported", "echo")
    return texts


API = PRESETS["api"]  # what a request that says nothing gets


@dataclass
class Job:
    """A validated request: `n` rows per prompt, row i with params[i]."""
    model: str
    prompts: list[list[int]]
    n: int
    params: list[SamplingParams]
    stream: bool
    include_usage: bool
    logprobs: bool  # the response reports log-probabilities (the engine computes them only then)
    adds: dict[str, torch.Tensor] = dataclass_field(default_factory=dict)  # steering, for these rows only


def sampling_params(body: dict[str, Any], max_new_tokens: int, logprobs: int) -> SamplingParams:
    """The request's sampling settings, validated by `SamplingParams` (one range check for all paths)."""
    try:
        return SamplingParams(
            max_new_tokens=max_new_tokens,
            temperature=field(body, "temperature", (int, float), API.temperature),
            top_p=field(body, "top_p", (int, float), API.top_p),
            top_k=field(body, "top_k", int, API.top_k),
            min_p=field(body, "min_p", (int, float), API.min_p),
            repetition_penalty=field(body, "repetition_penalty", (int, float), API.repetition_penalty),
            seed=field(body, "seed", int, API.seed),
            stop=stops(body), logprobs=logprobs)
    except FieldError as exc:
        raise bad_field(exc) from exc


def make_job(model: str, body: dict[str, Any], texts: list[str], logprobs: int | None, tokenizer: Tokenizer,
             context: int, limits: Limits) -> Job:
    """Rows for `texts` (n choices each) with budget, context and size checks. `logprobs`: the
    alternatives to report per token, or None to report no log-probabilities."""
    n = field(body, "n", int, 1, 1, MAX_N)
    if len(texts) * n > limits.max_rows:
        raise ApiError(400, f"{len(texts)} prompts x n={n} = {len(texts) * n} rows; this server takes at most "
                            f"{limits.max_rows} per request", "n", "too_many_rows")
    max_tokens = field(body, "max_tokens", int, None, 1, None)
    if "max_completion_tokens" in body:
        max_tokens = field(body, "max_completion_tokens", int, None, 1, None)
    prompts = tokenizer.encode_stories(texts)
    longest = max(len(p) for p in prompts)
    if longest >= context:
        raise ApiError(400, f"this model's maximum context length is {context} tokens, but the prompt alone "
                       f"has {longest} (with the start-of-story token): shorten the prompt",
                       "prompt", "context_length_exceeded")
    if max_tokens is not None and longest + max_tokens > context:
        raise ApiError(400, f"this model's maximum context length is {context} tokens, but {longest + max_tokens} "
                       f"were requested ({longest} in the prompt, {max_tokens} for the completion); "
                       "shorten the prompt or lower max_tokens", "max_tokens", "context_length_exceeded")
    # Without max_tokens each row writes until its story ends or its own prompt and text fill the
    # context (`Sequence.advance`), whatever the other prompts of the request: as `sample` does.
    params = sampling_params(body, max_tokens if max_tokens is not None else context, logprobs or 0)
    rows = [params.for_row(i) for i in range(len(prompts) * n)]
    stream = field(body, "stream", bool, False)
    options = body.get("stream_options") or {}
    include_usage = bool(isinstance(options, dict) and options.get("include_usage"))
    return Job(model, prompts, n, rows, stream, include_usage, logprobs is not None)


MAX_STEER = 8


def steering(body: dict[str, Any], directions: Mapping[str, tuple[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The request's ``steer`` field (an extension) as vectors to add at hook points, for its rows only.

    ``"steer": [{"direction": NAME, "alpha": 4.0}, {"hook": "blocks.1.hook_resid_post",
    "vector": [...], "alpha": -2}]``: a direction the server was started with (``serve
    --direction``, listed in ``/v1/models``) or a vector of the hook point's width, times alpha
    (default `STEER_ALPHA`, as `sample --alpha`). Entries at the same hook point add up. Whether
    the model can add them there is `Engine.submit`'s to check.
    """
    items = body.get("steer")
    if items is None:
        return {}
    if not isinstance(items, list) or len(items) > MAX_STEER or not all(isinstance(i, dict) for i in items):
        raise ApiError(400, f"'steer' must be a list of at most {MAX_STEER} objects", "steer", "invalid_value")
    adds: dict[str, torch.Tensor] = {}
    for item in items:
        alpha = field(item, "alpha", (int, float), STEER_ALPHA, -1e4, 1e4)
        if "direction" in item:
            name = item["direction"]
            if not isinstance(name, str) or name not in directions:
                raise ApiError(400, f"'steer': no direction named {name!r}; this model has "
                                    f"{sorted(directions) or 'none (start the server with --direction)'}",
                               "steer", "invalid_value")
            hook, vector = directions[name]
        else:
            hook, vector = item.get("hook"), item.get("vector")
            if not isinstance(hook, str) or not isinstance(vector, list) or len(vector) > 1 << 16 or \
                    not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in vector):
                raise ApiError(400, "'steer' entries need 'direction' (a name), or 'hook' (a hook point) and "
                                    "'vector' (numbers)", "steer", "invalid_value")
            vector = torch.tensor(vector, dtype=torch.float32)
        adds[hook] = adds[hook] + alpha * vector if hook in adds else alpha * vector
    return adds


def completion_logprobs(body: dict[str, Any]) -> int | None:
    """Alternatives per token a completions request wants reported (0: the chosen token's only), or
    None when it wants no log-probabilities."""
    return None if body.get("logprobs") is None else field(body, "logprobs", int, 0, 0, MAX_LOGPROBS)


def chat_logprobs(body: dict[str, Any]) -> int | None:
    """`completion_logprobs` for chat: ``logprobs`` true, with ``top_logprobs`` alternatives."""
    want = field(body, "logprobs", bool, False)
    top = field(body, "top_logprobs", int, 0, 0, MAX_LOGPROBS)
    return top if want else None


# ---------------------------------------------------------------- responses
class Format:
    """How a job's events become OpenAI JSON: one subclass per endpoint."""
    object_name = ""
    chunk_name = ""
    prefix = ""

    def __init__(self, j: Job, tokenizer: Tokenizer) -> None:
        self.j, self.logprobs, self.tok = j, j.logprobs, tokenizer
        self.id = f"{self.prefix}-{secrets.token_hex(12)}"
        self.created = int(time.time())
        self.offsets = [0] * len(j.params)

    def header(self, name: str) -> dict[str, Any]:
        return {"id": self.id, "object": name, "created": self.created, "model": self.j.model}

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

    def __init__(self, j: Job, tokenizer: Tokenizer) -> None:
        super().__init__(j, tokenizer)
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
