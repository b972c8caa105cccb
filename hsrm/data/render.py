"""Prompt + response → token ids, the same way for training, evaluation and scoring.

* The conversation goes through the tokenizer's own chat template (BOS, role headers and end of
  turn come from there, so they are never duplicated or missing: reward-bench#166).
* Over-long sequences are cut from the *left*: the prompt goes first and the end of the response,
  the token the reward is read from, always survives (RewardBench's protocol; trl#2118).
* Tokenizers whose pad token is the EOS (Llama-3, SmolLM2) get a distinct pad token, so that a
  plain transformers pipeline reading "the last non-pad token" still finds the real end
  (trl#2758). hsrm itself reads the reward from the attention mask and needs no pad id at all.
* Many sequences go through at once (:func:`encode_batch`, :func:`encode_pairs`): one template
  call, one batch call into the fast tokenizer's Rust backend, and the prompt a pair's two sides
  share tokenized once; the ids are exactly those of :func:`encode`, one at a time (issue 19).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import InputError

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
    eos_ids = {tokenizer.eos_token_id} | {
        tokenizer.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|eot_id|>", "</s>") if t in tokenizer.get_vocab()
    }
    if tokenizer.pad_token_id is None or tokenizer.pad_token_id in eos_ids:
        vocab = tokenizer.get_vocab()
        choice = next(
            (
                t
                for t in PAD_CANDIDATES
                if t in vocab and vocab[t] not in eos_ids and vocab[t] != tokenizer.bos_token_id
            ),
            None,
        )
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
    return render_texts(tokenizer, [prompt], [response])[0]


def render_texts(tokenizer, prompts: Sequence[Sequence[dict]], responses: Sequence[str]) -> list[str]:
    """:func:`render_text` for many conversations, in one ``apply_chat_template`` call."""
    conversations = [
        list(prompt) + [{"role": "assistant", "content": response}] for prompt, response in zip(prompts, responses)
    ]
    return tokenizer.apply_chat_template(conversations, tokenize=False) if conversations else []


@dataclass
class TruncationStats:
    sequences: int = 0
    truncated: int = 0
    tokens_cut: int = 0

    def add(self, tokens_cut: Iterable[int]) -> None:
        """Count sequences by the tokens each lost (0: kept whole)."""
        for cut in tokens_cut:
            self.sequences += 1
            self.truncated += cut > 0
            self.tokens_cut += cut

    def summary(self) -> str:
        return f"{self.truncated} of {self.sequences} sequences truncated from the left ({self.tokens_cut} tokens cut)"


def _check_max_length(max_length: int | None) -> None:
    if max_length is not None and (isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 1):
        raise InputError(f"max_length must be a positive number of tokens, got {max_length!r}")


def left_truncate(ids: list[int], max_length: int | None) -> tuple[list[int], int]:
    """(the last ``max_length`` ids, how many were cut): the end of the response, where the reward
    is read, always survives."""
    if max_length is None or len(ids) <= max_length:
        return ids, 0
    return ids[-max_length:], len(ids) - max_length


def encode(
    tokenizer, prompt: Sequence[dict], response: str, max_length: int | None, stats: TruncationStats | None = None
) -> list[int]:
    """Token ids of prompt + response through the chat template, left-truncated to ``max_length``."""
    (ids,), cuts = encode_batch(tokenizer, [prompt], [response], max_length)
    if stats is not None:
        stats.add(cuts)
    return ids


def encode_batch(
    tokenizer, prompts: Sequence[Sequence[dict]], responses: Sequence[str], max_length: int | None
) -> tuple[list[list[int]], list[int]]:
    """:func:`encode` for many (prompt, response) at once: (ids per sequence, tokens cut per sequence)."""
    return encode_texts(tokenizer, render_texts(tokenizer, prompts, responses), max_length)


def encode_texts(tokenizer, texts: Sequence[str], max_length: int | None) -> tuple[list[list[int]], list[int]]:
    """Token ids of texts already formatted (rendered by a chat template, or sent that way by an RL
    framework: ``hsrm serve``'s ``/get_reward``), left-truncated: (ids per sequence, tokens cut per sequence)."""
    _check_max_length(max_length)
    cut = [left_truncate(ids, max_length) for ids in token_ids(tokenizer, texts)]
    return [ids for ids, _ in cut], [n for _, n in cut]


def encode_pairs(
    tokenizer,
    prompts: Sequence[Sequence[dict]],
    chosen: Sequence[str],
    rejected: Sequence[str],
    max_length: int | None,
    rejected_prompts: Sequence[Sequence[dict]] | None = None,
):
    """:func:`encode` of both sides of many pairs: ((chosen ids, tokens cut), (rejected ids, tokens cut)).
    The text the two sides share (the prompt, as the template renders it) is tokenized once."""
    _check_max_length(max_length)
    chosen_texts = render_texts(tokenizer, prompts, chosen)
    rejected_texts = render_texts(tokenizer, prompts if rejected_prompts is None else rejected_prompts, rejected)
    sides = []
    for side in pair_token_ids(tokenizer, chosen_texts, rejected_texts):
        cut = [left_truncate(ids, max_length) for ids in side]
        sides.append(([ids for ids, _ in cut], [n for _, n in cut]))
    return sides[0], sides[1]


# ---------------------------------------------------------------------------------- text → ids
def token_ids(tokenizer, texts: Sequence[str]) -> list[list[int]]:
    """``tokenizer(text, add_special_tokens=False)["input_ids"]`` for every text, in one batch call
    (the template already holds BOS where the model wants one: no special tokens are added again).

    A fast tokenizer's Rust backend is called directly (``encode_batch_fast``: no offsets, its own
    threads) when it holds no truncation or padding of its own, which transformers would first switch
    off; anything else goes through the tokenizer's own call.
    """
    texts = list(texts)
    if not texts:
        return []
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if (
        backend is not None
        and backend.truncation is None
        and backend.padding is None
        and backend.encode_special_tokens == bool(getattr(tokenizer, "split_special_tokens", False))
    ):
        encode_many = getattr(backend, "encode_batch_fast", backend.encode_batch)
        return [encoding.ids for encoding in encode_many(texts, add_special_tokens=False)]
    return tokenizer(texts, add_special_tokens=False)["input_ids"]


def pair_token_ids(tokenizer, first: Sequence[str], second: Sequence[str]) -> tuple[list[list[int]], list[list[int]]]:
    """:func:`token_ids` of ``first[i]`` and ``second[i]``, tokenizing the start they share once.

    Texts are cut at the last split token (:func:`split_tokens`) inside their common prefix: the
    shared piece is tokenized once and each side's rest alone, which is exact because the backend
    tokenizes the pieces between such tokens independently. A pair's two sides usually share the
    whole prompt, most of the text in multi-turn data (two thirds in HH-RLHF helpful-online).
    The premise is checked on the first pairs of every call; a tokenizer that breaks it gets whole texts.
    """
    first, second = list(first), list(second)
    if len(first) != len(second):
        raise InputError(f"pair_token_ids: {len(first)} first texts but {len(second)} second texts")
    n = len(first)
    points = split_tokens(tokenizer)
    if not points or n == 0:
        whole = token_ids(tokenizer, first + second)
        return whole[:n], whole[n:]
    cuts = [_shared_cut(a, b, points) for a, b in zip(first, second)]
    pieces = token_ids(
        tokenizer,
        [a[:cut] for a, cut in zip(first, cuts)]
        + [a[cut:] for a, cut in zip(first, cuts)]
        + [b[cut:] for b, cut in zip(second, cuts)],
    )
    shared = pieces[:n]
    first_ids = [head + rest for head, rest in zip(shared, pieces[n : 2 * n])]
    second_ids = [head + rest for head, rest in zip(shared, pieces[2 * n :])]
    checked = min(n, 4)
    if token_ids(tokenizer, first[:checked] + second[:checked]) != first_ids[:checked] + second_ids[:checked]:
        if type(tokenizer).__name__ not in _WARNED_UNSPLITTABLE:
            _WARNED_UNSPLITTABLE.add(type(tokenizer).__name__)
            logger.warning(
                "%s does not tokenize the text between its special tokens piece by piece; tokenizing each "
                "side of every pair whole (slower)",
                type(tokenizer).__name__,
            )
        whole = token_ids(tokenizer, first + second)
        return whole[:n], whole[n:]
    return first_ids, second_ids


_WARNED_UNSPLITTABLE: set[str] = set()


def split_tokens(tokenizer) -> tuple[str, ...]:
    """The chat template's special tokens at which the tokenizer's output splits exactly:
    ids(a + b) == ids(a) + ids(b) whenever ``b`` starts with one.

    A fast tokenizer first cuts the text at its added tokens, matched on the raw text (not
    normalised), then normalises and pre-tokenises every piece on its own (HF tokenizers'
    ``AddedVocabulary``). A token that also takes the spaces on its left (``lstrip``), matches only
    whole words, or is matched after normalisation would reach across the cut, so it is not one;
    with ``split_special_tokens`` nothing is cut at all. Only tokens the chat template writes are
    looked for.
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    template = getattr(tokenizer, "chat_template", None)
    if backend is None or not isinstance(template, str) or backend.encode_special_tokens:
        return ()
    return tuple(
        token.content
        for token in backend.get_added_tokens_decoder().values()
        if token.content
        and token.content in template
        and not token.normalized
        and not token.lstrip
        and not token.single_word
    )


def _shared_cut(a: str, b: str, points: Sequence[str]) -> int:
    """Where ``a`` and ``b`` can be tokenized apart: the start of the last split token lying wholly
    inside their common prefix (so both texts hold it there); 0 when there is none."""
    common = _common_prefix_length(a, b)
    return max(0, max(a.rfind(point, 0, common) for point in points))


def _common_prefix_length(a: str, b: str) -> int:
    low, high = 0, min(len(a), len(b))
    while low < high:  # bisection on slice equality: C comparisons, no loop over characters in Python
        middle = (low + high + 1) // 2
        if a[:middle] == b[:middle]:
            low = middle
        else:
            high = middle - 1
    return low


@dataclass
class PaddedBatch:
    """Right-padded ids with the attention mask that marks real tokens."""

    input_ids: Any
    attention_mask: Any


def pad_sequences(sequences: Sequence[Sequence[int]], pad_id: int, side: str = "right"):
    """A (batch, max_len) LongTensor pair (ids, mask), padded on ``side``."""
    import torch

    if not sequences:
        raise InputError("pad_sequences: no sequences")
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        n = len(seq)
        if n == 0:
            raise InputError(f"pad_sequences: sequence {row} is empty")
        if side == "right":
            ids[row, :n] = torch.tensor(seq, dtype=torch.long)
            mask[row, :n] = 1
        else:
            ids[row, width - n :] = torch.tensor(seq, dtype=torch.long)
            mask[row, width - n :] = 1
    return ids, mask
