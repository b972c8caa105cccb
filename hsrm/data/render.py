"""Prompt + response → token ids, the same way for training, evaluation and scoring.

* The conversation goes through the tokenizer's own chat template (BOS, role headers and end of
  turn come from there, so they are never duplicated or missing: reward-bench#166).
* Over-long sequences are cut from the *left*: the prompt goes first and the end of the response,
  the token the reward is read from, always survives (RewardBench's protocol; trl#2118).
* Tokenizers whose pad token is the EOS (Llama-3, SmolLM2) get a distinct pad token, so that a
  plain transformers pipeline reading "the last non-pad token" still finds the real end
  (trl#2758). hsrm itself reads the reward from the attention mask and needs no pad id at all.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Sequence

logger = logging.getLogger(__name__)

# Used when a tokenizer has no chat template of its own.
FALLBACK_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)
PAD_CANDIDATES = ("<|finetune_right_pad_id|>", "<pad>", "<|pad|>", "[PAD]", "<|endoftext|>", "<unk>")


def ensure_chat_template(tokenizer) -> None:
    if not getattr(tokenizer, "chat_template", None):
        logger.warning("tokenizer has no chat template; using hsrm's plain '<|role|>' template")
        tokenizer.chat_template = FALLBACK_CHAT_TEMPLATE


def ensure_distinct_pad_token(tokenizer, model=None) -> int:
    """Make the pad token differ from EOS (and from every end-of-turn token), reusing an existing
    special token where one exists, else adding ``<|pad|>`` (and resizing the model's embeddings).
    Returns the pad id; sets ``model.config.pad_token_id`` when a model is given."""
    eos_ids = {tokenizer.eos_token_id} | {tokenizer.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|eot_id|>", "</s>") if t in tokenizer.get_vocab()}
    if tokenizer.pad_token_id is None or tokenizer.pad_token_id in eos_ids:
        vocab = tokenizer.get_vocab()
        choice = next((t for t in PAD_CANDIDATES if t in vocab and vocab[t] not in eos_ids and vocab[t] != tokenizer.bos_token_id), None)
        if choice is not None:
            tokenizer.pad_token = choice
        else:
            tokenizer.add_special_tokens({"pad_token": "<|pad|>"})
            if model is not None and model.get_input_embeddings().num_embeddings < len(tokenizer):
                model.resize_token_embeddings(len(tokenizer))
    if model is not None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return tokenizer.pad_token_id


def render_text(tokenizer, prompt: Sequence[dict], response: str) -> str:
    """The full conversation text (prompt turns + the assistant's response) as the template renders it."""
    messages = list(prompt) + [{"role": "assistant", "content": response}]
    return tokenizer.apply_chat_template(messages, tokenize=False)


@dataclass
class TruncationStats:
    sequences: int = 0
    truncated: int = 0
    tokens_cut: int = 0

    def summary(self) -> str:
        return f"{self.truncated} of {self.sequences} sequences truncated from the left ({self.tokens_cut} tokens cut)"


def encode(tokenizer, prompt: Sequence[dict], response: str, max_length: int | None, stats: TruncationStats | None = None) -> list[int]:
    """Token ids of prompt + response through the chat template, left-truncated to ``max_length``."""
    return encode_text(tokenizer, render_text(tokenizer, prompt, response), max_length, stats)


def encode_text(tokenizer, text: str, max_length: int | None, stats: TruncationStats | None = None) -> list[int]:
    """Token ids of a text that is already formatted (rendered by a chat template, or sent that way
    by an RL framework: ``hsrm serve``'s ``/get_reward``), left-truncated to ``max_length``."""
    if max_length is not None and (isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 1):
        raise ValueError(f"max_length must be a positive number of tokens, got {max_length!r}")
    # The template already holds BOS where the model wants one: add no special tokens again.
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if stats is not None:
        stats.sequences += 1
    if max_length is not None and len(ids) > max_length:
        if stats is not None:
            stats.truncated += 1
            stats.tokens_cut += len(ids) - max_length
        ids = ids[-max_length:]
    return ids


@dataclass
class PaddedBatch:
    """Right-padded ids with the attention mask that marks real tokens."""

    input_ids: Any
    attention_mask: Any


def pad_sequences(sequences: Sequence[Sequence[int]], pad_id: int, side: str = "right"):
    """A (batch, max_len) LongTensor pair (ids, mask), padded on ``side``."""
    import torch

    if not sequences:
        raise ValueError("pad_sequences: no sequences")
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        n = len(seq)
        if n == 0:
            raise ValueError(f"pad_sequences: sequence {row} is empty")
        if side == "right":
            ids[row, :n] = torch.tensor(seq, dtype=torch.long)
            mask[row, :n] = 1
        else:
            ids[row, width - n:] = torch.tensor(seq, dtype=torch.long)
            mask[row, width - n:] = 1
    return ids, mask


@dataclass
class PairwiseCollator:
    """Pre-tokenized pairs → one batch holding all chosen rows then all rejected rows, so a pair
    goes through the model in a single forward pass.

    >>> c = PairwiseCollator(pad_id=0)
    >>> b = c([{"chosen_ids": [5, 6, 7], "rejected_ids": [8], "margin": 2.0}])
    >>> b["input_ids"].tolist(), b["attention_mask"].tolist(), b["margin"].tolist()
    ([[5, 6, 7], [8, 0, 0]], [[1, 1, 1], [1, 0, 0]], [2.0])
    """

    pad_id: int
    padding_side: str = "right"

    def __call__(self, features: list[dict]) -> dict:
        import torch

        sequences = [f["chosen_ids"] for f in features] + [f["rejected_ids"] for f in features]
        ids, mask = pad_sequences(sequences, self.pad_id, self.padding_side)
        margin = torch.tensor([float(f.get("margin", 1.0)) for f in features], dtype=torch.float32)
        return {"input_ids": ids, "attention_mask": mask, "margin": margin}


@dataclass
class PointwiseCollator:
    """Pre-tokenized responses with their attribute ratings → a padded batch and a (batch, n) target.

    >>> c = PointwiseCollator(pad_id=0)
    >>> b = c([{"input_ids": [4, 5], "labels": [3.0]}, {"input_ids": [6], "labels": [1.0]}])
    >>> b["input_ids"].tolist(), b["labels"].tolist()
    ([[4, 5], [6, 0]], [[3.0], [1.0]])
    """

    pad_id: int
    padding_side: str = "right"

    def __call__(self, features: list[dict]) -> dict:
        import torch

        ids, mask = pad_sequences([f["input_ids"] for f in features], self.pad_id, self.padding_side)
        labels = torch.tensor([list(f["labels"]) for f in features], dtype=torch.float32)
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}
