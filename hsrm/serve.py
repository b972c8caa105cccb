"""`hsrm serve`: a reward model behind HTTP, with the requests of many clients merged into
token-budget batches for the one scoring engine.

    hsrm serve --model runs/scaled-bt-expo --port 8000
    curl -s localhost:8000/score -d '{"prompts": ["What is 2+2?"], "responses": ["4"]}'   # {"rewards": [...]}

RL stacks that run the reward model as a separate service (OpenRLHF's ``--remote_rm_url``,
verl-style and home-grown loops) call it over HTTP; TRL's online trainers call it through
:class:`hsrm.client.RemoteRewardScorer`, a reward function with TRL's signature.

Endpoints:

* ``GET /health``: 200 once the model is loaded, 503 before. The port is bound before the model
  loads, so a supervisor can tell "loading" from "down".
* ``POST /score`` ``{"prompts": [...], "responses": [...]}`` → ``{"rewards": [...]}``: the semantics
  and numbers of :meth:`hsrm.scoring.RewardScorer.score` (a prompt is text or a list of
  ``{role, content}`` messages; the reward model's chat template; left truncation).
* ``POST /get_reward`` ``{"query": ["full text", ...]}`` → ``{"rewards": [...]}``: OpenRLHF's
  remote reward-model protocol. The texts are already formatted, so they are tokenized as given
  (no special tokens added) and cut from the left; other keys (OpenRLHF also sends ``prompts`` and
  ``labels``) are ignored.
* ``GET /info``: the model record, the resolved ``max_length``, the engine's layout, the server's
  limits and its counts (requests, batches, the most requests merged into one batch).

How a request becomes rewards. The handler reads the body (at most ``--max-body-bytes``), checks
it and tokenizes it with the scorer's own encoders in a worker thread, off the event loop. The
token ids join one queue. One batching thread owns the model: it takes the oldest request, waits
at most ``--max-wait-ms`` for company while another request is being read and tokenized (not at
all when none is, nor once ``--max-batch-tokens`` real tokens are queued), merges the queued
requests up to that budget (a request larger than the budget goes alone and the engine splits
it), scores the merge through the engine (``RewardScorer.score_ids`` →
:func:`hsrm.engine.score_sequences`, layout ``auto``: one call in packed rows of
``--max-batch-tokens`` on CUDA; on the CPU's padded layout the prompts shared and the other
sequences cut by :func:`hsrm.engine.padding_runs`, so that a few requests' sequences of mixed
length are not padded to their longest) and hands each request its own slice. The engine reads
every reward at its own sequence's last real token, so a request's company changes its rewards by
float rounding only (tested at 1e-5 in fp32).

Bad input gets an answer naming the field (400 malformed JSON; 422 wrong types, empty lists,
prompts and responses that do not pair up; 413 a body or a sequence count over the limits; 504
no reward within ``--request-timeout-s``; 500 naming the items whose reward is NaN or infinite), and
the server goes on. Texts are never logged unless
``--log-requests``. SIGTERM drains: uvicorn stops accepting connections and waits for the
requests in flight, the batching thread answers everything queued, and the process exits 0.

Why FastAPI + uvicorn rather than LitServe: LitServe's dynamic batching counts *requests*
(``max_batch_size``, ``batch_timeout``) and hands each batch to inference workers in other
processes through queues. A reward request carries anything from one to thousands of sequences of
any length, so the budget that bounds memory and latency is real tokens, and a batch's rewards
must be split back per request: that loop is ours on either stack. On FastAPI it runs in the
server's own process beside the model, with no serialisation between the HTTP side and the model,
and FastAPI + uvicorn bring the rest (routing, a thread pool for tokenization, graceful shutdown).
We did not build a LitServe variant to measure; the bar it would have to clear is
``bench/serve.py``'s: on 2 idle CPU cores this server delivered 0.83–0.92×, 0.82–0.94× and
0.91–1.09× the in-process engine's real tokens/s at 1, 4 and 16 concurrent clients over four runs
(docs/scoring.md has the figures).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import ipaddress
import json
import logging
import signal
import socket
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from jinja2 import TemplateError
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from .data.io import DataError
from .data.messages import to_messages
from .data.render import render_text
from .engine import DEFAULT_MAX_TOKENS
from .errors import UserError
from .options import EngineInput, ModelInput, Options, OptionsError, ResultFormat, option
from .scoring import RewardScorer, nonfinite_rewards_message

logger = logging.getLogger(__name__)

LOGGED_BODY_CHARS = 4000  # --log-requests: longer bodies are cut in the log line


# ------------------------------------------------------------------------------------ options
@dataclass
class ServeOptions(ResultFormat, EngineInput, ModelInput, Options):
    """`hsrm serve`'s options: the engine's (hsrm.options.EngineInput) and the server's own."""

    host: str = option(
        "127.0.0.1",
        "address to listen on; the loopback default keeps the server to this machine (it has no authentication)",
    )
    port: int = option(8000, "TCP port; 0 takes a free one (printed at start)")
    max_tokens: int = option(
        DEFAULT_MAX_TOKENS,
        "real tokens merged from waiting requests into one engine call (and per packed row)",
        aliases=["--max-batch-tokens", "--max_batch_tokens"],
        positive=True,
    )
    max_queued: int = option(
        1024,
        "requests waiting for the model at most; more are answered 429 with Retry-After (a client retries "
        "later instead of waiting behind minutes of work)",
        positive=True,
    )
    body_timeout_s: float = option(
        30.0, "seconds a client may take to send its request body; a slower one is answered 408 and closed"
    )
    shutdown_grace_s: float = option(
        30.0,
        "on SIGTERM/SIGINT: seconds to answer what was accepted before the process exits (a typical kill grace)",
    )
    max_wait_ms: float = option(
        10.0,
        "how long the oldest waiting request waits for others to batch with (milliseconds), while another "
        "request is being read; with none on its way it does not wait",
    )
    max_sequences: int = option(4096, "sequences per request; more are refused with 413", positive=True)
    max_body_bytes: int = option(32 * 2**20, "request body size; larger bodies are refused with 413", positive=True)
    request_timeout_s: float = option(
        300.0, "seconds a request may wait for its rewards (queue and forward passes) before a 504"
    )
    normalize: bool = option(
        False,
        "answer (r - mean) / std with the reward statistics of the model record (hsrm train and expo write "
        "them); off: the raw reward",
    )
    log_requests: bool = option(
        False,
        "log every request with its texts and rewards, and uvicorn's access log (off: no text is ever logged)",
    )

    def __post_init__(self):
        super().__post_init__()
        if not 0 <= self.port <= 65535:
            raise OptionsError(f"--port must be 0…65535, got {self.port}")
        if self.max_wait_ms < 0:
            raise OptionsError(f"--max-wait-ms must be ≥ 0, got {self.max_wait_ms}")
        for flag, value in (
            ("--request-timeout-s", self.request_timeout_s),
            ("--body-timeout-s", self.body_timeout_s),
            ("--shutdown-grace-s", self.shutdown_grace_s),
        ):
            if not value > 0:
                raise OptionsError(f"{flag} must be positive, got {value}")


def serve_options(argv: Sequence[str]) -> ServeOptions:
    """``hsrm serve``'s options through the options layer every verb uses (``--config``, both spellings,
    one-line errors)."""
    from .options import parse_options

    return parse_options(
        ServeOptions,
        list(argv),
        prog="hsrm serve",
        description=(
            "A reward model over HTTP (POST /score, POST /get_reward, GET /health, GET /info); the requests of many "
            "clients are merged into token-budget batches for the scoring engine."
        ),
    )


def load_scorer(options: ServeOptions) -> RewardScorer:
    # max_tokens bounds both a merged batch and a packed row: on CUDA a merged batch is one packed
    # row, one forward pass.
    scorer = RewardScorer.from_options(options)
    record = scorer.record
    if options.normalize and not (record.reward_mean is not None and record.reward_std):
        raise UserError(
            f"--normalize: {scorer.model_dir}'s record holds no reward statistics (reward_mean, reward_std > 0); "
            "models trained by hsrm train or written by hsrm expo have them"
        )
    return scorer


# ------------------------------------------------------------------------------------ batching
class ServerStopping(RuntimeError):
    """A request arrived after the batcher was told to stop."""


@dataclass
class WaitingRequest:
    sequences: list[list[int]]
    tokens: int  # real tokens, what the batch budget counts
    future: concurrent.futures.Future
    queued_at: float  # time.monotonic()


class Arrival:
    """A request being read and tokenized (:meth:`RewardBatcher.arriving`): company on its way, worth
    waiting for, until it is submitted or fails."""

    open = True


class QueueFull(RuntimeError):
    """``--max-queued`` requests already wait for the model."""

    def __init__(self, requests: int, tokens: int):
        super().__init__(f"{requests} requests ({tokens} tokens) already wait for the model (--max-queued)")
        self.requests, self.tokens = requests, tokens


class RewardBatcher:
    """The one thread that owns the reward model: it loads it, then merges waiting requests into
    token-budget batches for the engine and resolves each request's future with its own rewards.

    ``load`` runs on that thread, so nothing else ever touches the model; ``submit`` may be called
    from any thread. ``stop`` lets the thread answer everything already queued, then joins it.
    """

    def __init__(
        self,
        load: Callable[[], RewardScorer],
        *,
        max_batch_tokens: int,
        max_wait_s: float,
        max_queued: int | None = None,
        on_load_failure: Callable[[BaseException], None] | None = None,
    ):
        self._load = load
        self.max_batch_tokens, self.max_wait_s, self.max_queued = max_batch_tokens, max_wait_s, max_queued
        self.on_load_failure = on_load_failure
        self.scorer: RewardScorer | None = None  # set once loaded: the server is ready
        self.load_error: BaseException | None = None
        self._waiting: deque[WaitingRequest] = deque()
        self._waiting_tokens = 0
        self._arriving = 0  # requests being read and tokenized (open Arrivals)
        self._changed = threading.Condition()
        self._stopping = False
        # A daemon thread cannot keep a crashed process alive; a clean stop joins it.
        self._thread = threading.Thread(target=self._run, name="hsrm-reward-batcher", daemon=True)
        # scoring_seconds: time inside the engine; over a stretch of wall time it is how busy the model was.
        self.counts = {
            "requests": 0,
            "sequences": 0,
            "tokens": 0,
            "batches": 0,
            "most_requests_in_a_batch": 0,
            "scoring_seconds": 0.0,
        }

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        with self._changed:
            self._stopping = True
            self._changed.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def arriving(self) -> Arrival:
        """Count a request that is being read and tokenized until :meth:`submit` takes it or
        :meth:`arrived` closes it: the oldest waiting request waits for company only while one is."""
        with self._changed:
            self._arriving += 1
        return Arrival()

    def arrived(self, arrival: Arrival | None) -> None:
        """Close ``arrival`` (no request will follow from it); closing twice is harmless."""
        with self._changed:
            self._close(arrival)

    def _close(self, arrival: Arrival | None) -> None:  # holding self._changed
        if arrival is not None and arrival.open:
            arrival.open = False
            self._arriving -= 1
            self._changed.notify_all()

    def submit(self, sequences: list[list[int]], arrival: Arrival | None = None) -> concurrent.futures.Future:
        item = WaitingRequest(sequences, sum(len(s) for s in sequences), concurrent.futures.Future(), time.monotonic())
        with self._changed:
            self._close(arrival)  # in the same lock as the append: the batcher never waits for this request itself
            if self._stopping:
                raise ServerStopping("the server is shutting down")
            if self.max_queued is not None and len(self._waiting) >= self.max_queued:
                raise QueueFull(len(self._waiting), self._waiting_tokens)
            self._waiting.append(item)
            self._waiting_tokens += item.tokens
            self._changed.notify_all()
        return item.future

    def _run(self) -> None:
        try:
            self.scorer = self._load()
        except BaseException as err:  # noqa: BLE001 - handed to the main thread, which exits with it
            self.load_error = err
            logger.error("loading the reward model failed: %s", err)
            if self.on_load_failure is not None:
                self.on_load_failure(err)
            return
        logger.info("reward model loaded: %r", self.scorer)
        while (batch := self._next_batch()) is not None:
            if batch:
                self._score(batch)

    def _next_batch(self) -> list[WaitingRequest] | None:
        """The requests to score together, oldest first; None once stopping with nothing left."""
        with self._changed:
            while not self._waiting and not self._stopping:
                self._changed.wait()
            if not self._waiting:
                return None
            # Counted from the oldest request's arrival: one that queued while the model was busy has
            # already waited, so under load batches form without any added delay. It waits only while
            # another request is being read and tokenized: with none on its way, waiting would only
            # delay it (one client: the whole --max-wait-ms on every request). Draining waits for no one.
            deadline = self._waiting[0].queued_at + self.max_wait_s
            while not self._stopping and self._waiting_tokens < self.max_batch_tokens and self._arriving:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._changed.wait(remaining)
            batch, tokens = [], 0
            while self._waiting and (not batch or tokens + self._waiting[0].tokens <= self.max_batch_tokens):
                item = self._waiting.popleft()
                self._waiting_tokens -= item.tokens
                if item.future.set_running_or_notify_cancel():  # False: its client already had a 504
                    batch.append(item)
                    tokens += item.tokens
            return batch

    def _score(self, batch: list[WaitingRequest]) -> None:
        sequences = [sequence for item in batch for sequence in item.sequences]
        started = time.perf_counter()
        try:
            rewards = self.scorer.score_ids(sequences).tolist()
        except Exception as err:  # noqa: BLE001 - e.g. out of memory: fail these requests, keep serving
            logger.error(
                "scoring %d requests (%d sequences) failed: %s: %s", len(batch), len(sequences), type(err).__name__, err
            )
            for item in batch:
                item.future.set_exception(err)
            return
        start = 0
        for item in batch:
            item.future.set_result(rewards[start : start + len(item.sequences)])
            start += len(item.sequences)
        counts = self.counts
        counts["requests"] += len(batch)
        counts["sequences"] += len(sequences)
        counts["tokens"] += sum(item.tokens for item in batch)
        counts["batches"] += 1
        counts["most_requests_in_a_batch"] = max(counts["most_requests_in_a_batch"], len(batch))
        counts["scoring_seconds"] += time.perf_counter() - started


# ------------------------------------------------------------------------------- request bodies
class RequestError(Exception):
    """An answer other than 200: the status and a message that names the field at fault."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers


def json_type(value: Any) -> str:
    """A value's type as JSON calls it (clients are not all Python).

    >>> json_type(3), json_type("a"), json_type(None), json_type({})
    ('number', 'string', 'null', 'object')
    """
    for kind, name in ((bool, "boolean"), ((int, float), "number"), (str, "string"), (list, "array"), (dict, "object")):
        if isinstance(value, kind):
            return name
    return "null" if value is None else type(value).__name__


def items_of(body: Any, key: str, limit: int, allow_empty: bool = False) -> list:
    """``body[key]``: a list of at most ``limit`` items (non-empty unless ``allow_empty``), or a
    RequestError naming ``key``."""
    if not isinstance(body, dict):
        raise RequestError(422, f"the body must be a JSON object with {key!r}, got a JSON {json_type(body)}")
    if key not in body:
        raise RequestError(422, f"{key!r} is missing")
    value = body[key]
    if not isinstance(value, list):
        raise RequestError(422, f"{key!r} must be an array, got a JSON {json_type(value)}")
    if not value and not allow_empty:
        raise RequestError(422, f"{key!r} is empty; send at least one item")
    if len(value) > limit:
        raise RequestError(
            413, f"{key!r} holds {len(value)} items; this server scores at most {limit} per request (--max-sequences)"
        )
    return value


def encode_score_body(scorer: RewardScorer, body: Any, limit: int) -> list[list[int]]:
    """Token ids of a ``/score`` body, exactly as :meth:`RewardScorer.score` encodes the pairs."""
    prompts, responses = items_of(body, "prompts", limit), items_of(body, "responses", limit)
    if len(prompts) != len(responses):
        raise RequestError(
            422, f"'prompts' has {len(prompts)} items and 'responses' {len(responses)}; they pair up one to one"
        )
    check_texts(responses, "responses")
    conversations = []
    for index, prompt in enumerate(prompts):
        try:
            conversations.append(to_messages(prompt, "request", index, "prompts"))
        except DataError as err:  # err.problem never quotes the text itself
            raise RequestError(422, f"prompts[{index}]: {err.problem}") from None
        for turn in conversations[-1]:
            problem = unicode_problem(str(turn.get("content", "")))
            if problem:
                raise RequestError(422, f"prompts[{index}]: {problem}")
    try:
        return scorer.encode_many(conversations, responses)
    except TemplateError:  # e.g. a template that refuses a system turn, or turns out of order: find which
        for index, (messages, response) in enumerate(zip(conversations, responses)):
            try:
                scorer.encode(messages, response)
            except TemplateError as err:
                raise RequestError(
                    422, f"prompts[{index}]: the reward model's chat template refuses this conversation ({err})"
                ) from None
        raise


def unicode_problem(text: str) -> str | None:
    """Why ``text`` cannot be tokenized (JSON lets a lone surrogate such as "\\ud800" through), or None."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        return f"not valid Unicode text (a lone surrogate at character {err.start})"
    return None


def check_texts(texts: Sequence[Any], field: str) -> None:
    for index, text in enumerate(texts):
        if not isinstance(text, str):
            raise RequestError(422, f"{field}[{index}] must be a string, got a JSON {json_type(text)}")
        problem = unicode_problem(text)
        if problem:
            raise RequestError(422, f"{field}[{index}]: {problem}")


@dataclass(frozen=True)
class TurnEnd:
    """What the reward model's chat template writes around an assistant's text: ``opener`` before it
    (the end of the user turn and the assistant header), ``closer`` after it (``<|im_end|>\\n``)."""

    opener: str
    closer: str


@functools.lru_cache(maxsize=8)
def turn_end_of(tokenizer) -> TurnEnd:
    user, response = "\u27e6hsrm user\u27e7", "\u27e6hsrm response\u27e7"  # texts no template writes itself
    text = render_text(tokenizer, [{"role": "user", "content": user}], response)
    at = text.rindex(response)
    return TurnEnd(opener=text[text.rindex(user) + len(user) : at], closer=text[at + len(response) :])


def completed_query(text: str, turn_end: TurnEnd, eos: str | None = None) -> str:
    """An OpenRLHF query as the model was trained on it. OpenRLHF sends ``decode(prompt_ids +
    response_ids)``: the response ends with the EOS token, or with nothing when generation was cut,
    while training rendered the template's whole end of turn (``<|im_end|>`` *and* ``\\n`` for
    ChatML). A query that holds the assistant opener is a conversation: what is missing of the closer
    is appended (an EOS that the template does not write there is replaced by the closer). Any other
    text is scored as given."""
    if not turn_end.closer or not turn_end.opener or turn_end.opener not in text:
        return text
    if eos and text.endswith(eos) and not turn_end.closer.startswith(eos):
        text = text[: -len(eos)]
    for kept in range(len(turn_end.closer), 0, -1):
        if text.endswith(turn_end.closer[:kept]):
            return text + turn_end.closer[kept:]
    return text + turn_end.closer


def encode_query_body(scorer: RewardScorer, body: Any, limit: int, key: str = "query") -> list[list[int]]:
    """Token ids of a ``/get_reward`` body (``key`` "query"; vLLM's ``/classify`` and ``/pooling``:
    "input", a text or a list): each text with its end of turn completed as training rendered it
    (:func:`completed_query`), cut from the left."""
    if key == "input" and isinstance(body, dict) and isinstance(body.get("input"), str):
        body = {**body, "input": [body["input"]]}  # vLLM takes one text or a list
    texts = items_of(body, key, limit, allow_empty=True)  # OpenRLHF's sharding sends [] to some servers
    check_texts(texts, key)
    turn_end = turn_end_of(scorer.tokenizer)
    texts = [completed_query(text, turn_end, scorer.tokenizer.eos_token) for text in texts]
    sequences = scorer.encode_texts(texts)
    for index, ids in enumerate(sequences):
        if not ids:
            raise RequestError(422, f"{key}[{index}] is empty: there is no token to read a reward at")
    return sequences


def encode_vllm_score_body(scorer: RewardScorer, body: Any, limit: int) -> list[list[int]]:
    """vLLM's ``/v1/score`` (``text_1`` the prompt, ``text_2`` the responses; one text of either side
    pairs with every text of the other), encoded as ``/score`` encodes (prompt, response) pairs."""
    if scorer.num_labels != 1:
        raise RequestError(400, f"/v1/score needs a single-output head; this one has {scorer.num_labels}: use /score")
    if not isinstance(body, dict):
        raise RequestError(
            422, f"the body must be a JSON object with 'text_1' and 'text_2', got a JSON {json_type(body)}"
        )
    sides = {key: [value] if isinstance(value, str) else value for key, value in body.items()}
    for key in ("text_1", "text_2"):
        check_texts(items_of(sides, key, limit), key)
    first, second = sides["text_1"], sides["text_2"]
    if len(first) == 1:
        first = first * len(second)
    if len(second) == 1:
        second = second * len(first)
    if len(first) != len(second):
        raise RequestError(422, f"'text_1' has {len(first)} texts and 'text_2' {len(second)}; give one or as many")
    return encode_score_body(scorer, {"prompts": first, "responses": second}, limit)


def openrlhf_answer(rewards: list[float], sequences: list[list[int]], body: Any, scorer: RewardScorer) -> dict:
    """OpenRLHF's ``serve_rm`` shape (its client reads ``rewards`` or ``scores``)."""
    return {"rewards": rewards, "scores": rewards, "extra_logs": {}}


def vllm_answer(kind: str, entry: Callable[[int, float], dict]):
    """vLLM's answer shape for ``/classify``, ``/pooling`` and ``/v1/score``: ``data`` holds one
    ``entry(index, reward)`` per text, ``usage`` the tokens read."""

    def shape(rewards: list[float], sequences: list[list[int]], body: Any, scorer: RewardScorer) -> dict:
        tokens = sum(map(len, sequences))
        model = body.get("model") if isinstance(body, dict) and isinstance(body.get("model"), str) else None
        return {
            "id": f"{kind}-{uuid.uuid4().hex}",
            "object": "list",
            "created": int(time.time()),
            "model": model or scorer.model_dir,
            "data": [entry(index, reward) for index, reward in enumerate(rewards)],
            "usage": {
                "prompt_tokens": tokens,
                "total_tokens": tokens,
                "completion_tokens": 0,
                "prompt_tokens_details": None,
            },
        }

    return shape


# hsrm's reward where vLLM puts a probability: verl reads data[-1]["probs"][-1] as the reward
CLASSIFY_ANSWER = vllm_answer("classify", lambda i, r: {"index": i, "label": "reward", "probs": [r], "num_classes": 1})
POOLING_ANSWER = vllm_answer("pool", lambda i, r: {"index": i, "object": "pooling", "data": [r]})
SCORE_ANSWER = vllm_answer("score", lambda i, r: {"index": i, "object": "score", "score": r})


async def client_left(request: Request) -> None:
    """Return once the client has closed its connection (polled: ASGI tells only when asked)."""
    while not await request.is_disconnected():
        await asyncio.sleep(0.1)


async def read_json(request: Request, limit: int, timeout: float | None = None) -> Any:
    """:func:`read_body_json` within ``timeout`` seconds, else 408: a client that sends half a body
    and stalls would otherwise hold its connection (and delay a shutdown) for as long as it likes."""
    try:
        return await asyncio.wait_for(read_body_json(request, limit), timeout)
    except TimeoutError:
        raise RequestError(
            408, f"the request body did not arrive within {timeout:g} s (--body-timeout-s)", {"Connection": "close"}
        ) from None


async def read_body_json(request: Request, limit: int) -> Any:
    """The parsed body, or 413 when it is over ``limit`` bytes, or 400 when it is not JSON.

    An oversized body is still read to its end (and thrown away): answering before it is consumed
    would close the connection with unread data, which resets it, and the client would see a reset
    instead of the 413.
    """
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size <= limit:
            chunks.append(chunk)
    if size > limit:
        raise RequestError(413, f"the body is {size} bytes; this server takes at most {limit} (--max-body-bytes)")
    try:
        return json.loads(b"".join(chunks))
    except UnicodeDecodeError:
        raise RequestError(400, "the body is not valid JSON (not UTF-8 text)") from None
    except json.JSONDecodeError as err:  # its msg describes the syntax, never the text
        raise RequestError(
            400, f"the body is not valid JSON ({err.msg}: line {err.lineno}, column {err.colno})"
        ) from None


def clipped(text: str, limit: int = LOGGED_BODY_CHARS) -> str:
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text) - limit} more characters)"


# ------------------------------------------------------------------------------------ the app
class RewardService:
    """What the endpoints share: the options, the batcher, and the counts of requests accepted for
    scoring (valid and queued) and answered with rewards: equal after a drain, when none is dropped."""

    def __init__(self, options: ServeOptions, load: Callable[[], RewardScorer] | None = None):
        self.options = options
        self.batcher = RewardBatcher(
            load or (lambda: load_scorer(options)),
            max_batch_tokens=options.max_tokens,
            max_wait_s=options.max_wait_ms / 1000,
            max_queued=options.max_queued,
        )
        # touched only on the event loop; dropped: accepted, then dropped because the client had left
        self.accepted = self.answered = self.dropped = self.refused_busy = self.gone = 0

    def ready_scorer(self) -> RewardScorer:
        if self.batcher.scorer is None:
            raise RequestError(
                503, "the reward model failed to load" if self.batcher.load_error else "the reward model is loading"
            )
        return self.batcher.scorer

    def retry_after(self, queued_tokens: int) -> int:
        """Seconds until the queue ahead has likely been scored, from the model's rate so far."""
        counts = self.batcher.counts
        rate = counts["tokens"] / counts["scoring_seconds"] if counts["scoring_seconds"] > 0 else None
        return max(1, round(queued_tokens / rate)) if rate else 1

    async def rewards(
        self, sequences: list[list[int]], request: Request | None = None, arrival: Arrival | None = None
    ) -> list[float]:
        try:
            future = self.batcher.submit(sequences, arrival)
        except ServerStopping as err:
            raise RequestError(503, str(err)) from None
        except QueueFull as err:
            self.refused_busy += 1
            wait = self.retry_after(err.tokens)
            raise RequestError(429, f"{err}; retry in {wait} s", headers={"Retry-After": str(wait)}) from None
        self.accepted += 1
        timeout = self.options.request_timeout_s
        waiting = asyncio.ensure_future(asyncio.wrap_future(future))
        watching = asyncio.ensure_future(client_left(request)) if request is not None else None
        try:
            # On timeout (or when the client leaves) the wrapper is cancelled, which cancels the
            # future; the batcher then skips the request if it has not started scoring it.
            done, _ = await asyncio.wait(
                {waiting, *([watching] if watching else [])}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
            if waiting in done:
                return waiting.result()
            waiting.cancel()
            if watching is not None and watching in done:
                dropped = future.cancel()  # False once the batcher has begun to score it
                self.dropped += dropped
                logger.info(
                    "%s: the client disconnected while its request %s",
                    request.url.path,
                    "waited; dropped before scoring" if dropped else "was scored",
                )
                raise RequestError(499, "the client disconnected")  # nginx's "client closed request"; no reader
            raise TimeoutError
        except TimeoutError:
            raise RequestError(
                504,
                f"no rewards within {timeout:g} s (--request-timeout-s): the server is "
                "overloaded or the request is too large",
            ) from None
        except RequestError:
            raise
        except Exception as err:  # noqa: BLE001 - the batch failed (logged by the batcher)
            raise RequestError(500, f"scoring failed: {type(err).__name__}: {err}") from None
        finally:
            if watching is not None:
                watching.cancel()

    async def answer(
        self,
        request: Request,
        encode: Callable[[RewardScorer, Any, int], list[list[int]]],
        shape: Callable[..., dict] = openrlhf_answer,
    ) -> JSONResponse:
        scorer = self.ready_scorer()
        arrival = self.batcher.arriving()  # the batcher may wait for this one while it is read and tokenized
        try:
            body = await read_json(request, self.options.max_body_bytes, self.options.body_timeout_s)
            sequences = await run_in_threadpool(encode, scorer, body, self.options.max_sequences)
            rewards = await self.rewards(sequences, request, arrival) if sequences else []
        finally:
            self.batcher.arrived(arrival)  # a no-op once submitted
        refusal = nonfinite_rewards_message(rewards, "of this request")
        if refusal:  # JSON has no NaN: say what happened rather than fail while encoding the answer
            raise RequestError(500, refusal)
        if self.options.normalize:
            mean, std = scorer.record.reward_mean, scorer.record.reward_std
            rewards = [(reward - mean) / std for reward in rewards]
        self.answered += 1
        if self.options.log_requests:
            logger.info("%s %s → rewards %s", request.url.path, clipped(json.dumps(body, ensure_ascii=False)), rewards)
        return JSONResponse(shape(rewards, sequences, body, scorer))

    def info(self) -> dict[str, Any]:
        from .engine import choose_layout

        scorer = self.ready_scorer()
        parameter = next(scorer.model.parameters())
        options = self.options
        return {
            "model": scorer.model_dir,
            "objective": scorer.record.objective,
            "attributes": scorer.attributes,
            "attribute_weights": scorer.attribute_weights,
            "max_length": scorer.max_length,
            "record": scorer.meta,
            "engine": {
                "layout": choose_layout(scorer.model, scorer.layout),
                "device": str(parameter.device),
                "dtype": str(parameter.dtype).removeprefix("torch."),
                "batch_size": scorer.batch_size,
            },
            "limits": {
                "max_batch_tokens": options.max_tokens,
                "max_wait_ms": options.max_wait_ms,
                "max_sequences": options.max_sequences,
                "max_body_bytes": options.max_body_bytes,
                "request_timeout_s": options.request_timeout_s,
                "max_queued": options.max_queued,
                "body_timeout_s": options.body_timeout_s,
                "shutdown_grace_s": options.shutdown_grace_s,
            },
            "counts": {
                **self.batcher.counts,
                "accepted": self.accepted,
                "answered": self.answered,
                "dropped_client_gone": self.dropped,
                "refused_busy": self.refused_busy,
                "client_gone_before_read": self.gone,
            },
            "rewards": {
                "normalized": bool(options.normalize),
                **({"mean": scorer.record.reward_mean, "std": scorer.record.reward_std} if options.normalize else {}),
            },
            "get_reward": {
                "appends_end_of_turn": turn_end_of(scorer.tokenizer).closer,
                "to": "queries holding the assistant opener "
                f"{turn_end_of(scorer.tokenizer).opener!r}: the part of it they lack (an EOS the template "
                "does not write there is replaced); other texts are scored as given",
            },
        }


def service_of(request: Request) -> RewardService:
    return request.app.state.service


async def health(request: Request) -> JSONResponse:
    batcher = service_of(request).batcher
    if batcher.scorer is not None:
        return JSONResponse({"status": "ok"})
    return JSONResponse({"status": "failed" if batcher.load_error else "loading"}, status_code=503)


async def info(request: Request) -> JSONResponse:
    return JSONResponse(service_of(request).info())


async def score(request: Request) -> JSONResponse:
    return await service_of(request).answer(request, encode_score_body)


async def get_reward(request: Request) -> JSONResponse:
    return await service_of(request).answer(request, encode_query_body)


async def classify(request: Request) -> JSONResponse:
    encode = functools.partial(encode_query_body, key="input")
    return await service_of(request).answer(request, encode, CLASSIFY_ANSWER)


async def pooling(request: Request) -> JSONResponse:
    encode = functools.partial(encode_query_body, key="input")
    return await service_of(request).answer(request, encode, POOLING_ANSWER)


async def vllm_score(request: Request) -> JSONResponse:
    return await service_of(request).answer(request, encode_vllm_score_body, SCORE_ANSWER)


async def request_error_response(request: Request, err: RequestError) -> JSONResponse:
    return JSONResponse({"detail": err.message}, status_code=err.status, headers=err.headers)


async def client_gone_response(request: Request, err: ClientDisconnect) -> Response:
    """A client that left while sending its body: one INFO line (it was a ~60-line ERROR traceback)."""
    service_of(request).gone += 1
    logger.info("%s: the client disconnected before its request was read", request.url.path)
    return Response(status_code=499)  # nginx's "client closed request"; nobody is left to read it


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI):
    service: RewardService = app.state.service
    service.batcher.start()
    try:
        yield
    finally:
        # uvicorn calls this after the connections in flight have closed; whatever is still queued
        # is answered before the thread ends.
        await run_in_threadpool(service.batcher.stop)
        counts = service.batcher.counts
        logger.info(
            "stopped: accepted %d requests for scoring, answered %d with rewards (%d sequences, %d tokens, %d batches)",
            service.accepted,
            service.answered,
            counts["sequences"],
            counts["tokens"],
            counts["batches"],
        )


def create_app(options: ServeOptions, load: Callable[[], RewardScorer] | None = None) -> FastAPI:
    """The ASGI app; ``load`` builds the scorer on the batching thread (default: :func:`load_scorer`)."""
    # The endpoints take raw JSON and check it themselves (messages that name the field, never echo
    # the text), so FastAPI's schema pages would show nothing useful: they are off.
    app = FastAPI(title="hsrm reward server", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.service = RewardService(options, load)
    app.add_api_route("/health", health, methods=["GET"])
    app.add_api_route("/info", info, methods=["GET"])
    app.add_api_route("/score", score, methods=["POST"])
    app.add_api_route("/get_reward", get_reward, methods=["POST"])
    # vLLM's pooling-model endpoints, as verl's reward client and vLLM's own clients call them
    for path in ("/classify", "/v1/classify"):
        app.add_api_route(path, classify, methods=["POST"])
    for path in ("/pooling", "/v1/pooling"):
        app.add_api_route(path, pooling, methods=["POST"])
    app.add_api_route("/v1/score", vllm_score, methods=["POST"])  # vLLM's /score is hsrm's own /score
    app.add_exception_handler(RequestError, request_error_response)
    app.add_exception_handler(ClientDisconnect, client_gone_response)
    return app


# ------------------------------------------------------------------------------------ the CLI
@contextlib.contextmanager
def stop_signals_recorded():
    """While uvicorn runs it owns SIGINT/SIGTERM (graceful shutdown); afterwards it re-raises the
    signal it caught so that the default action kills the process. A drained server has done its
    job and exits 0 (what a supervisor expects from a clean stop), so the re-raised signal lands
    here and is only recorded."""
    caught: list[int] = []
    stop_signals = (signal.SIGINT, signal.SIGTERM)
    previous = {sig: signal.signal(sig, lambda number, frame: caught.append(number)) for sig in stop_signals}
    try:
        yield caught
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def url_of(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def listening_socket(host: str, port: int) -> socket.socket:
    """A socket bound to (host, port), or one line saying why not. uvicorn's own ``bind_socket``
    logs the error and exits the process (rc 1, or 3 from its supervisor) with no word on what to do."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP, not the default 0: asyncio sets TCP_NODELAY only on connections whose protocol
    # says TCP. Without it Nagle held each answer's body until the client acknowledged the headers,
    # which a keep-alive client delays by 40 ms on Linux (42 ms of a 1-client request of ~240 ms).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as err:
        sock.close()
        hint = " (is another server on it?) choose another --port, or --port 0 for a free one" if port else ""
        raise UserError(f"cannot listen on {url_of(host, port)}: {err.strerror or err}{hint}") from None
    sock.set_inheritable(True)
    return sock


def serve(options: ServeOptions) -> None:
    import uvicorn

    app = create_app(options)
    service: RewardService = app.state.service
    config = uvicorn.Config(
        app,
        host=options.host,
        port=options.port,
        log_level="info",
        access_log=options.log_requests,
        timeout_graceful_shutdown=options.shutdown_grace_s,
    )
    server = uvicorn.Server(config)
    service.batcher.on_load_failure = lambda err: setattr(server, "should_exit", True)  # polled by uvicorn's main loop
    try:
        loopback = ipaddress.ip_address(options.host).is_loopback
    except ValueError:
        loopback = options.host == "localhost"
    if not loopback:
        logger.warning(
            "listening on %s: the server has no authentication; whoever reaches this address can use it", options.host
        )
    sock = listening_socket(options.host, options.port)  # bound here so that --port 0 can print the port it got
    host, port = sock.getsockname()[:2]
    if options.json:
        print(json.dumps({"model": options.model, "url": url_of(host, port), "health": url_of(host, port) + "/health"}))
        sys.stdout.flush()
    else:
        print(
            f"hsrm serve: {options.model} at {url_of(host, port)} (GET /health answers 200 once the model is loaded)",
            flush=True,
        )
    with stop_signals_recorded():
        server.run(sockets=[sock])
    if service.batcher.load_error is not None:
        raise service.batcher.load_error


def main(argv: list[str] | None = None) -> None:
    options = serve_options(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    serve(options)


if __name__ == "__main__":
    main()
