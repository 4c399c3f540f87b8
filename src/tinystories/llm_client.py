"""Async client for any OpenAI-compatible endpoint (OpenAI, vLLM, llama.cpp server, Ollama).

Retries 429/5xx/timeouts/malformed answers with exponential backoff and full jitter (at
least as long as the server's Retry-After), enforces requests- and tokens-per-minute limits,
counts tokens and cost, and drives the OpenAI Batch API. The API key is read from an
environment variable and only ever placed in the Authorization header.

The transport is aiohttp: ~0.1 ms of client CPU per request at 256 in flight, against
~0.5-0.7 ms for httpx (bench/README.md, "Teacher client"). https certificates are verified
against the system's CA store (SSL_CERT_FILE / SSL_CERT_DIR point it elsewhere); proxy
variables are not used.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import os
import random
import secrets
import ssl
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, TypeVar

if TYPE_CHECKING:  # imported where used: `--help` and configs must not pay for it
    import aiohttp

from tinystories.config import Config, setting
from tinystories.errors import TinyStoriesError

log = logging.getLogger(__name__)
T = TypeVar("T")
JSON_HEADERS = {"Content-Type": "application/json"}
BATCH_TAG_KEY = "tinystories_tag"  # the metadata key that ties a batch to the run's batch_state.json
RETRYABLE_STATUS = {408, 409, 429, 500, 502, 503, 504, 520, 522, 524}
FATAL_STATUS = {401: "authentication failed", 403: "permission denied", 404: "not found"}


@dataclass(frozen=True)
class ClientConfig(Config):
    """How to reach an OpenAI-compatible endpoint: the teacher (`generate`) and the judge (`eval`)
    both use this, under the same flag names."""

    base_url: str = setting("https://api.openai.com/v1", "API root including /v1")
    model: str = setting("gpt-4o-mini", "model name at the endpoint")
    api: Literal["chat", "completion"] = setting("chat", "chat/completions or completions endpoint")
    api_key_env: str = setting("OPENAI_API_KEY", "environment variable holding the API key (the key is "
                               "never logged or written)")
    max_tokens: int = setting(1024, "most tokens per answer", ge=1)
    temperature: float = setting(1.0, "sampling temperature of the endpoint", ge=0, le=2)
    concurrency: int = setting(32, "requests in flight", ge=1, le=100_000)
    requests_per_minute: float = setting(0.0, "requests-per-minute limit (0 = none)", ge=0, flag="rpm")
    tokens_per_minute: float = setting(0.0, "tokens-per-minute limit, prompt + max answer (0 = none)",
                                       ge=0, flag="tpm")
    timeout_s: float = setting(120.0, "seconds per request before it is retried", gt=0, flag="timeout")
    max_retries: int = setting(8, "retries per request (429/5xx/timeouts/malformed answers)", ge=0)
    backoff_base_s: float = setting(1.0, "first retry delay (doubles each retry, with jitter)", ge=0)
    backoff_max_s: float = setting(60.0, "longest retry delay", ge=0)
    price_input_per_1m: float = setting(0.0, "USD per 1M prompt tokens, for the cost report", ge=0,
                                        flag="price-in")
    price_output_per_1m: float = setting(0.0, "USD per 1M completion tokens", ge=0, flag="price-out")
    batch_poll_s: float = setting(30.0, "seconds between polls of an OpenAI Batch API batch", gt=0)
    batch_max_requests: int = setting(50_000, "requests per Batch API batch (OpenAI's limit)", ge=1)


class LLMError(Exception):
    """A request that failed for good (retries exhausted or a non-retryable answer)."""


class BatchEnded(LLMError):
    """A Batch API batch that ended (failed, expired, cancelled) with no results to collect."""


class MalformedResponse(Exception):
    """A 200 answer without the expected content; retried like a server error."""


@dataclass
class Completion:
    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclass
class Usage:
    requests: int = 0
    retries: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    errors: dict[str, int] = field(default_factory=dict)  # retry reason -> count

    def add(self, c: Completion) -> None:
        self.requests += 1
        self.prompt_tokens += c.prompt_tokens
        self.completion_tokens += c.completion_tokens

    def cost(self, cfg: ClientConfig) -> float:
        return (self.prompt_tokens * cfg.price_input_per_1m
                + self.completion_tokens * cfg.price_output_per_1m) / 1e6


class RateLimiter:
    """Token bucket refilled at `per_minute / 60` per second, holding up to 10 s of budget
    (so a restart cannot burst a whole minute's quota at once)."""

    def __init__(self, per_minute: float):
        self.rate = per_minute / 60.0
        self.capacity = max(1.0, per_minute / 6.0)
        self.level = self.capacity
        self.last = time.monotonic()
        self.lock = asyncio.Lock()

    def _refill(self) -> None:
        now = time.monotonic()
        self.level = min(self.capacity, self.level + (now - self.last) * self.rate)
        self.last = now

    async def acquire(self, amount: float) -> None:
        async with self.lock:  # waiters are served in order
            need = min(amount, self.capacity)  # a request larger than the bucket waits for a full one
            self._refill()
            while self.level < need:
                await asyncio.sleep((need - self.level) / self.rate)
                self._refill()
            self.level -= amount

    def refund(self, amount: float) -> None:
        self._refill()
        self.level = min(self.capacity, self.level + amount)


@dataclass
class Response:
    """A whole answer (answers are small JSON documents, read at once)."""

    status: int
    headers: Mapping[str, str]  # case-insensitive
    body: bytes
    url: str

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")

    def json(self) -> Any:
        return json.loads(self.body)


def batch_file_name(tag: str) -> str:
    """The name a batch input file is uploaded under: how a rerun finds an upload it lost."""
    return f"tinystories-batch-{tag}.jsonl"


def multipart_body(fields: dict[str, str], filename: str, data: bytes, content_type: str) -> tuple[bytes, str]:
    """A multipart/form-data body (`fields`, then `data` as the part "file") and its Content-Type.
    Built as bytes once, so a retry resends the same body."""
    boundary = secrets.token_hex(16)
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
             for name, value in fields.items()]
    parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"\r\n'
                 f"Content-Type: {content_type}\r\n\r\n".encode() + data + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def parse_retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        parsed = email.utils.parsedate_to_datetime(value) if value else None
        return max(0.0, parsed.timestamp() - time.time()) if parsed else None


def parse_completion(data: Any, api: str) -> Completion:
    """Text and usage of a chat or completion answer; MalformedResponse if there is no text."""
    try:
        choice = data["choices"][0]
        text = choice["message"]["content"] if api == "chat" else choice["text"]
    except (KeyError, IndexError, TypeError) as exc:
        raise MalformedResponse(f"no {api} text in the answer ({type(exc).__name__}: {exc})") from exc
    if not isinstance(text, str) or not text.strip():
        raise MalformedResponse("empty text in the answer")
    usage = data.get("usage") or {}
    return Completion(text.strip(), int(usage.get("prompt_tokens") or 0),
                      int(usage.get("completion_tokens") or 0))


def api_key(cfg: ClientConfig) -> str | None:
    """The endpoint's API key from the environment; OpenAI's own API refuses to go without one,
    so that is said before any work that would then be wasted (callers check it early)."""
    key = os.environ.get(cfg.api_key_env)
    if not key and "api.openai.com" in cfg.base_url:
        raise TinyStoriesError(f"set the API key for {cfg.base_url} in the environment variable {cfg.api_key_env} "
                               f"(or name another variable with api_key_env)")
    return key


class LLMClient:
    def __init__(self, cfg: ClientConfig):
        self.cfg = cfg
        self.usage = Usage()
        key = api_key(cfg)
        self._root = cfg.base_url.rstrip("/") + "/"
        self._headers = {"Authorization": f"Bearer {key}"} if key else {}
        self._session: aiohttp.ClientSession | None = None  # made inside the event loop, on first use
        self._rpm = RateLimiter(cfg.requests_per_minute) if cfg.requests_per_minute > 0 else None
        self._tpm = RateLimiter(cfg.tokens_per_minute) if cfg.tokens_per_minute > 0 else None

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _send(self, method: str, path: str, body: bytes | None, headers: Mapping[str, str] | None) -> Response:
        """One attempt; the connection goes back to the keep-alive pool once the body is read."""
        import aiohttp

        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self.cfg.concurrency, ssl=ssl.create_default_context()),
                headers=self._headers, timeout=aiohttp.ClientTimeout(total=self.cfg.timeout_s),
            )
        url = self._root + path
        # No redirects: an API that redirects is misconfigured, and the answer says where to.
        async with self._session.request(method, url, data=body, headers=headers, allow_redirects=False) as r:
            response = Response(r.status, r.headers, await r.read(), url)
        log.debug('HTTP Request: %s %s "%d"', method, url, r.status)  # never the headers (API key)
        return response

    def request_body(self, prompt: str) -> tuple[str, dict[str, Any]]:
        """The endpoint path and JSON body for one prompt."""
        body: dict[str, Any] = {"model": self.cfg.model, "max_tokens": self.cfg.max_tokens,
                                "temperature": self.cfg.temperature}
        if self.cfg.api == "chat":
            return "chat/completions", {**body, "messages": [{"role": "user", "content": prompt}]}
        return "completions", {**body, "prompt": prompt}

    async def complete(self, prompt: str) -> Completion:
        path, body = self.request_body(prompt)
        estimate = len(prompt) / 4 + self.cfg.max_tokens
        if self._rpm:
            await self._rpm.acquire(1)
        if self._tpm:
            await self._tpm.acquire(estimate)
        completion = await self._request("POST", path, lambda r: parse_completion(r.json(), self.cfg.api),
                                         json.dumps(body).encode(), JSON_HEADERS)
        if self._tpm:  # give back what the answer did not use
            self._tpm.refund(max(0.0, estimate - completion.prompt_tokens - completion.completion_tokens))
        self.usage.add(completion)
        return completion

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        delay = random.uniform(0, min(self.cfg.backoff_max_s, self.cfg.backoff_base_s * 2**attempt))
        return max(delay, retry_after or 0.0)

    async def _request(self, method: str, path: str, parse: Callable[[Response], T],
                       body: bytes | None = None, headers: Mapping[str, str] | None = None,
                       attempts: int | None = None) -> T:
        """Send with retries (`attempts`, default max_retries + 1); `parse` turns a 200 answer
        into a result or raises MalformedResponse."""
        import aiohttp

        reason = ""
        attempts = self.cfg.max_retries + 1 if attempts is None else attempts
        for attempt in range(attempts):
            retry_after = None
            try:
                response = await self._send(method, path, body, headers)
            except asyncio.TimeoutError:
                reason = "timeout"
            except aiohttp.ClientConnectorCertificateError as exc:  # retrying cannot fix it
                raise TinyStoriesError(
                    f"the TLS certificate of {self.cfg.base_url} failed verification "
                    f"({exc.certificate_error}); if your server uses its own CA, point the "
                    "environment variable SSL_CERT_FILE at that CA's certificate; if this system "
                    "has no CA store, at Mozilla's: SSL_CERT_FILE=$(python -m certifi)"
                ) from exc
            except aiohttp.ClientError as exc:
                reason = f"connection error ({type(exc).__name__})"
            else:
                if response.status < 300:
                    try:
                        return parse(response)
                    except (MalformedResponse, ValueError) as exc:  # ValueError: bad JSON
                        reason = f"malformed answer ({exc})"[:200]
                elif response.status in RETRYABLE_STATUS:
                    reason = f"HTTP {response.status}"
                    retry_after = parse_retry_after(response.headers.get("retry-after"))
                elif response.status in FATAL_STATUS:
                    raise TinyStoriesError(
                        f"{FATAL_STATUS[response.status]} (HTTP {response.status}) at "
                        f"{response.url}: check --base-url, --model and the key in "
                        f"${self.cfg.api_key_env}; the server said: {response.text[:300]}"
                    )
                else:
                    raise LLMError(f"HTTP {response.status}: {response.text[:300]}")
            kind = reason.split(" (")[0]
            self.usage.errors[kind] = self.usage.errors.get(kind, 0) + 1
            if attempt < attempts - 1:
                self.usage.retries += 1
                delay = self._backoff(attempt, retry_after)
                log.debug("%s %s: %s; retry %d in %.2f s", method, path, reason, attempt + 1, delay)
                await asyncio.sleep(delay)
        raise LLMError(f"gave up after {attempts} attempts; last: {reason}")

    # --- OpenAI Batch API -------------------------------------------------------------

    # Exactly-once creation: a request whose answer is lost (a timeout, a dropped connection,
    # a killed process) may still have created its file or batch. So each upload is named and
    # each batch tagged (`metadata`) with a tag the caller records first, and before any retry
    # (and, on a rerun, before the first try) the API's lists are searched for that tag.

    async def upload_batch(self, prompts: dict[str, str], tag: str, since: float, resume: bool = False) -> str:
        """Upload one request per prompt (keyed by custom_id), or find the upload an earlier
        attempt (with `resume`, also an earlier run) made under this tag; the file id."""
        lines = []
        for custom_id, prompt in prompts.items():
            path, body = self.request_body(prompt)
            lines.append(json.dumps({"custom_id": custom_id, "method": "POST",
                                     "url": f"/v1/{path}", "body": body}))
        upload, content_type = multipart_body({"purpose": "batch"}, batch_file_name(tag),
                                              ("\n".join(lines) + "\n").encode(), "application/jsonl")
        return await self._once("files", upload, {"Content-Type": content_type},
                                lambda: self.find_file(tag, since), resume)

    async def create_batch(self, file_id: str, tag: str, since: float, resume: bool = False) -> str:
        """Start a batch on an uploaded file, tagged in its metadata, or find the one an earlier
        attempt (with `resume`, also an earlier run) started under this tag; the batch id."""
        path, _ = self.request_body("")
        batch = {"input_file_id": file_id, "endpoint": f"/v1/{path}", "completion_window": "24h",
                 "metadata": {BATCH_TAG_KEY: tag}}
        return await self._once("batches", json.dumps(batch).encode(), JSON_HEADERS,
                                lambda: self.find_batch(tag, since), resume)

    async def _once(self, what: str, body: bytes, headers: Mapping[str, str],
                    find: Callable[[], Awaitable[str | None]], resume: bool) -> str:
        reason = ""
        for attempt in range(self.cfg.max_retries + 1):
            if (attempt or resume) and (found := await find()):
                return found
            try:
                return await self._request("POST", what, lambda r: r.json()["id"], body, headers, attempts=1)
            except LLMError as exc:
                reason = str(exc)
            if attempt < self.cfg.max_retries:
                self.usage.retries += 1
                await asyncio.sleep(self._backoff(attempt, None))
        raise LLMError(f"POST /{what} failed {self.cfg.max_retries + 1} times; last: {reason}")

    async def find_file(self, tag: str, since: float) -> str | None:
        """The id of the batch input file uploaded under `tag`, if the API lists one."""
        name = batch_file_name(tag)
        return await self._find("files", {"purpose": "batch", "order": "desc"},
                                lambda f: f.get("filename") == name, since)

    async def find_batch(self, tag: str, since: float) -> str | None:
        """The id of the batch created under `tag`, if the API lists one."""
        return await self._find("batches", {}, lambda b: (b.get("metadata") or {}).get(BATCH_TAG_KEY) == tag,
                                since)

    async def _find(self, what: str, query: dict[str, str], match: Callable[[dict[str, Any]], bool],
                    since: float) -> str | None:
        """Page through a list endpoint (newest first, `after`/`has_more`) for a match; stop at
        items made a day before `since` (the tag was recorded then: nothing older can carry it)."""
        after = ""
        while True:
            params = {**query, "limit": "100", **({"after": after} if after else {})}
            page = await self._request("GET", f"{what}?{urllib.parse.urlencode(params)}", lambda r: r.json())
            items = page.get("data") or []
            for item in items:
                if match(item):
                    return str(item["id"])
                if item.get("created_at", since) < since - 86_400:
                    return None
            if not page.get("has_more") or not items:
                return None
            after = items[-1]["id"]

    async def collect_batch(self, batch_id: str) -> dict[str, Completion | str]:
        """Poll until the batch ends; custom_id -> Completion, or an error message."""
        while True:
            batch = await self._request("GET", f"batches/{batch_id}", lambda r: r.json())
            if batch["status"] in ("completed", "failed", "expired", "cancelled"):
                break
            await asyncio.sleep(self.cfg.batch_poll_s)
        results: dict[str, Completion | str] = {}
        for key in ("output_file_id", "error_file_id"):
            if batch.get(key):
                content = await self._request("GET", f"files/{batch[key]}/content", lambda r: r.text)
                for line in content.splitlines():
                    if line.strip():
                        item = json.loads(line)
                        results[item["custom_id"]] = self._batch_result(item)
        if not results and batch["status"] != "completed":
            raise BatchEnded(f"batch {batch_id} ended with status {batch['status']}: {batch.get('errors')}")
        return results

    def _batch_result(self, item: dict[str, Any]) -> Completion | str:
        response = item.get("response") or {}
        if item.get("error") or response.get("status_code") != 200:
            return f"batch request failed: {item.get('error') or response.get('status_code')}"
        try:
            completion = parse_completion(response.get("body"), self.cfg.api)
        except MalformedResponse as exc:
            return str(exc)
        self.usage.add(completion)
        return completion
