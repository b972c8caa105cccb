"""The client of `hsrm serve`: a served reward model as a TRL reward function, over HTTP.

    from hsrm.client import RemoteRewardScorer
    trainer = GRPOTrainer(..., reward_funcs=RemoteRewardScorer("http://127.0.0.1:8000"))

Its own module, apart from :mod:`hsrm.serve`, so that a trainer process that only calls a reward
server imports the standard library's HTTP client, never FastAPI, uvicorn or starlette.
"""

from __future__ import annotations

import http.client
import json
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from typing import Any

from .errors import InputError
from .scoring import split_completion


class RemoteRewardError(RuntimeError):
    """The reward server answered with an error (``status`` and its message), or could not be reached
    (``status`` None)."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


class RemoteRewardScorer:
    """A served reward model as a TRL reward function: ``(prompts, completions, **kwargs) -> list[float]``.

    ``RemoteRewardScorer("http://127.0.0.1:8000")(prompts, completions)`` handles TRL's plain-text
    and conversational formats as :class:`hsrm.scoring.RewardScorer` does (through
    :func:`hsrm.scoring.split_completion`) and scores through ``POST /score``, so the rewards are
    those of the in-process scorer. Standard library HTTP; connection errors and 503 (loading,
    shutting down) are retried ``retries`` times with a doubling wait (scoring is idempotent);
    other errors raise :class:`RemoteRewardError` with the server's message.
    """

    def __init__(
        self,
        url: str,
        *,
        timeout_s: float = 600.0,
        retries: int = 3,
        retry_wait_s: float = 0.5,
        name: str = "reward_remote",
    ):
        self.url = url.rstrip("/")
        self.timeout_s, self.retries, self.retry_wait_s = timeout_s, retries, retry_wait_s
        self.__name__ = name  # TRL logs a reward function as rewards/<__name__>/mean

    def __call__(self, prompts: Sequence[Any], completions: Sequence[Any], **kwargs) -> list[float]:
        """TRL's reward-function signature; extra columns (``completion_ids``, ``trainer_state`` …) are ignored."""
        if len(prompts) != len(completions):
            raise InputError(f"{len(prompts)} prompts for {len(completions)} completions")
        pairs = [
            split_completion(prompt, completion, index)
            for index, (prompt, completion) in enumerate(zip(prompts, completions))
        ]
        return self.score([messages for messages, _ in pairs], [response for _, response in pairs])

    def score(self, prompts: Sequence[Any], responses: Sequence[str]) -> list[float]:
        """Rewards of (prompt, response) pairs, as :meth:`RewardScorer.score` gives them."""
        return self._rewards("/score", {"prompts": list(prompts), "responses": list(responses)}, len(prompts))

    def get_reward(self, texts: Sequence[str]) -> list[float]:
        """Rewards of already formatted texts (OpenRLHF's protocol)."""
        return self._rewards("/get_reward", {"query": list(texts)}, len(texts))

    def info(self) -> dict[str, Any]:
        return self._request("GET", "/info")

    def wait_until_ready(self, timeout_s: float = 120.0) -> dict[str, Any]:
        """Poll ``/health`` until the model is loaded; then the server's ``/info``."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                return self.info()
            except RemoteRewardError as err:
                if err.status not in (None, 503) or time.monotonic() > deadline:
                    raise
            time.sleep(0.2)

    def _rewards(self, path: str, payload: dict, expected: int) -> list[float]:
        rewards = self._request("POST", path, payload).get("rewards")
        if not isinstance(rewards, list) or len(rewards) != expected:
            raise RemoteRewardError(
                f"{self.url}{path} answered {len(rewards) if isinstance(rewards, list) else 'no'} "
                f"rewards for {expected} items"
            )
        return rewards

    def _request(self, method: str, path: str, payload: dict | None = None) -> dict:
        data = None if payload is None else json.dumps(payload).encode()
        last: str = ""
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(min(self.retry_wait_s * 2 ** (attempt - 1), 10.0))
            request = urllib.request.Request(
                self.url + path, data=data, method=method, headers={"Content-Type": "application/json"}
            )
            try:
                with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                    return json.loads(response.read())
            except urllib.error.HTTPError as err:  # before URLError: it is one
                message = server_message(err)
                if err.code == 503 and attempt < self.retries:
                    last = f"503: {message}"
                    continue
                raise RemoteRewardError(f"{self.url}{path} answered {err.code}: {message}", status=err.code) from None
            except (urllib.error.URLError, ConnectionError, http.client.HTTPException, TimeoutError) as err:
                reason = getattr(err, "reason", err)
                if isinstance(reason, (TimeoutError, socket.timeout)):
                    # The server may still be working on it: resending would only add load.
                    raise RemoteRewardError(f"{self.url}{path}: no answer within {self.timeout_s:g} s") from None
                last = f"{type(reason).__name__}: {reason}"
        raise RemoteRewardError(
            f"{self.url}{path}: no answer after {self.retries + 1} tries ({last})",
            status=503 if last.startswith("503") else None,
        )


def server_message(err: urllib.error.HTTPError) -> str:
    """The ``detail`` an hsrm server puts in its error bodies, else the raw body (cut)."""
    try:
        body = err.read().decode("utf-8", "replace")
    except OSError:
        return err.reason or ""
    try:
        detail = json.loads(body).get("detail")
    except (ValueError, AttributeError):
        detail = None
    return detail if isinstance(detail, str) else body[:500]
