"""Conversation shapes: every loader turns its prompt into a list of chat messages.

A *prompt* inside hsrm is ``list[{"role": "user"|"assistant"|"system", "content": str}]`` ending on
a user turn; a *response* is the assistant's reply as plain text. Rendering through the tokenizer's
chat template happens later (render.py).
"""

from __future__ import annotations

import re
from typing import Any

from ..errors import InputError
from .io import DataError

Message = dict[str, str]
ROLES = ("system", "user", "assistant")

HELPSTEER_TURN_SEPARATOR = "<extra_id_1>"
_HH_TURN = re.compile(r"\n\n(Human|Assistant): ?")


def to_messages(prompt: Any, source: str = "<data>", index: int | None = None, field: str = "prompt") -> list[Message]:
    """Accept a plain string (one user turn) or a list of ``{role, content}`` dicts."""
    if isinstance(prompt, str):
        if not prompt.strip():
            raise DataError(source, index, field, "empty text")
        return [{"role": "user", "content": prompt}]
    if isinstance(prompt, list) and prompt:
        messages = []
        for turn_no, turn in enumerate(prompt):
            if not isinstance(turn, dict) or "role" not in turn or "content" not in turn:
                raise DataError(source, index, field, f"turn {turn_no} is not a {{role, content}} message")
            if turn["role"] not in ROLES or not isinstance(turn["content"], str):
                raise DataError(source, index, field, f"turn {turn_no} has role {turn['role']!r} or non-text content")
            messages.append({"role": turn["role"], "content": turn["content"]})
        return messages
    raise DataError(source, index, field, f"expected text or a list of chat messages, got {type(prompt).__name__}")


def response_text(response: Any, source: str = "<data>", index: int | None = None, field: str = "response") -> str:
    """A response as text: a string, or a chat list whose last turn is the assistant's."""
    if isinstance(response, list) and response and isinstance(response[-1], dict):
        if response[-1].get("role") != "assistant":
            raise DataError(source, index, field, "the last message of a response must be the assistant's")
        response = response[-1].get("content")
    if not isinstance(response, str):
        raise DataError(source, index, field, f"expected text, got {type(response).__name__}")
    if not response.strip():
        raise DataError(source, index, field, "empty response")
    return response


def split_helpsteer_turns(prompt: str) -> list[Message]:
    """HelpSteer2 multi-turn prompts: turns joined by ``<extra_id_1>``, later turns headed by
    ``User\\n`` or ``Assistant\\n``. The first turn is the user's."""
    segments = prompt.split(HELPSTEER_TURN_SEPARATOR)
    messages = [{"role": "user", "content": segments[0]}]
    for segment in segments[1:]:
        head, _, body = segment.partition("\n")
        role = {"user": "user", "assistant": "assistant"}.get(head.strip().lower())
        if role is None:  # no header: alternate roles
            role = "assistant" if messages[-1]["role"] == "user" else "user"
            body = segment
        messages.append({"role": role, "content": body})
    return messages


def parse_hh_transcript(text: str) -> list[Message]:
    """Anthropic HH-RLHF: ``\\n\\nHuman: … \\n\\nAssistant: …`` into chat messages."""
    parts = _HH_TURN.split(text)
    # parts = [preamble, role, content, role, content, ...]
    if len(parts) < 3:
        raise InputError("no '\\n\\nHuman:' / '\\n\\nAssistant:' turns found")
    messages = []
    for role, content in zip(parts[1::2], parts[2::2]):
        messages.append({"role": "user" if role == "Human" else "assistant", "content": content.strip()})
    return messages
