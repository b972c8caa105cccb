"""Score responses with a reward model: the engine every verb shares, wrapped for users.

    hsrm score --model runs/scaled-bt --data candidates.jsonl --output scored.jsonl

A text becomes a reward in three steps, the same for every verb: it is rendered with the reward
model's own chat template and cut from the left (``hsrm.data.render.encode``), scored by
:func:`hsrm.engine.score_sequences` (length-sorted padded batches, or packed rows on CUDA), which
reads the head at each sequence's last real token (:func:`hsrm.modeling.reward_outputs`), and
turned into the scalar reward with the attribute weights the model's record holds. ``hsrm
evaluate``, the ExPO factor search, RLOO, ``hsrm embed --golden-model`` and ``hsrm score`` all go
through :class:`RewardScorer`, so a text gets the same reward everywhere and whatever the batch.

:class:`RewardScorer` is also a reward function for TRL's online trainers::

    scorer = RewardScorer("runs/scaled-bt")
    trainer = RLOOTrainer(model=policy, reward_funcs=scorer, args=RLOOConfig(num_generations=4), ...)

It is deliberately *not* an ``nn.Module``: TRL would then call it as a bare sequence classifier
with the policy's text, skipping the reward model's own chat template and left truncation.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from .data.io import DataError, read_rows
from .data.messages import response_text, to_messages
from .data.render import TruncationStats, encode_batch, encode_texts
from .engine import DEFAULT_BATCH_SIZE, DEFAULT_MAX_TOKENS, LAYOUTS, score_sequences
from .errors import InputError
from .files import atomic_write_jsonl, check_output
from .metrics import best_of_n

if TYPE_CHECKING:
    from .shards import ShardedScoring

logger = logging.getLogger(__name__)


def split_completion(
    prompt: Any, completion: Any, index: int = 0, source: str = "<completions>"
) -> tuple[list[dict], str]:
    """(prompt messages, response text) from TRL's two formats.

    * plain text: ``prompt`` is a string, ``completion`` a string → one user turn + the reply;
    * conversational: ``prompt`` is a message list and ``completion`` a list of messages whose
      last one is the assistant's reply; earlier completion turns (tool calls) join the prompt.
    """
    messages = to_messages(prompt, source, index)
    if isinstance(completion, list):
        if not completion:
            raise DataError(source, index, "completion", "empty message list")
        if len(completion) > 1:
            messages = messages + to_messages(completion[:-1], source, index, "completion")
        last = completion[-1]
        if not isinstance(last, dict) or last.get("role") != "assistant":
            raise DataError(source, index, "completion", "the last completion message must be the assistant's")
        content = last.get("content")
        if isinstance(content, list):  # multimodal-style content parts: keep the text parts
            content = "".join(part.get("text", "") for part in content if isinstance(part, dict))
        if not isinstance(content, str):
            raise DataError(
                source, index, "completion", f"assistant content is {type(content).__name__}, expected text"
            )
        return messages, content
    if not isinstance(completion, str):
        raise DataError(
            source, index, "completion", f"expected text or a message list, got {type(completion).__name__}"
        )
    # An empty generation is a legitimate (bad) completion to score, so no emptiness check here.
    return messages, completion


# ------------------------------------------------------------------------------------ scorer
class RewardScorer:
    """A reward model ready to score text, and a TRL reward function.

    ``RewardScorer(model_dir)(prompts, completions)`` returns one float per completion. Rewards
    are computed exactly as in training and ``hsrm evaluate``: the reward model's chat template,
    left truncation, the head read at the last real token, and the scalar reward of the model's
    record (HelpSteer2-Preference appendix E): ``outputs · attribute_weights`` when the record holds
    weights, else the first output.

    Defaults come from the model record (``hsrm.record``): ``attribute_weights="auto"`` uses the
    recorded weights (``None`` forces the first output; a list overrides them), and
    ``max_length=None`` resolves by :func:`hsrm.modeling.resolve_max_length` (what the user asks,
    else the benchmark protocol the caller names, else the length the model was trained with, else
    2048; capped at the model's context). ``layout`` is the engine's (``auto``: packed on CUDA with
    a varlen attention path, padded otherwise), and so is ``share_prompts`` (each common prompt
    computed once where that is exact, :mod:`hsrm.engine`).
    """

    def __init__(
        self,
        model_dir: str,
        *,
        batch_size: int = DEFAULT_BATCH_SIZE,
        max_length: int | None = None,
        dtype: str | torch.dtype | None = "float32",
        device: str | None = None,
        attribute_weights: Sequence[float] | str | None = "auto",
        trust_remote_code: bool = False,
        progress: bool = False,
        name: str | None = None,
        layout: str = "auto",
        max_tokens: int = DEFAULT_MAX_TOKENS,
        attn_implementation: str | None = None,
        protocol_max_length: int | None = None,
        protocol_name: str = "",
        reward_output: int | str | None = None,
        share_prompts: bool = True,
    ):
        from .modeling import default_attention, load_reward_model, pick_device, resolve_max_length, torch_dtype

        if layout not in LAYOUTS:
            raise InputError(f"layout {layout!r}: choose one of {', '.join(LAYOUTS)}")
        if batch_size < 1 or max_tokens < 1:
            raise InputError(f"batch_size and max_tokens must be at least 1, got {batch_size} and {max_tokens}")
        dtype = dtype or "float32"
        device = pick_device(device)
        if attn_implementation is None and layout != "padded":
            attn_implementation = default_attention(device, torch_dtype(dtype))
        self.model, self.tokenizer, self.record = load_reward_model(
            model_dir,
            dtype=dtype,
            device=device,
            attn_implementation=attn_implementation,
            trust_remote_code=trust_remote_code,
        )
        self.model_dir = self.model.config.name_or_path or str(model_dir)
        self.num_labels = int(self.model.config.num_labels)
        weights = (
            self.record.attribute_weights
            if isinstance(attribute_weights, str) and attribute_weights == "auto"
            else attribute_weights
        )
        if weights is not None and len(weights) != self.num_labels:
            raise InputError(
                f"{self.model_dir}: {len(weights)} attribute weights for a head with {self.num_labels} outputs"
            )
        self.attribute_weights = list(weights) if weights is not None else None
        self.attributes = self._attribute_names()
        if reward_output is not None:
            self.attribute_weights = self._one_hot(reward_output)
        elif self.attribute_weights is None and self.num_labels > 1 and not self.record.attributes:
            # A head with several outputs and no hsrm record saying what they are (a 2-label
            # classifier, say): output 0 is often the *negative* class, so guessing would be silent and wrong.
            raise InputError(
                f"{self.model_dir}: its head has {self.num_labels} outputs ({', '.join(self.attributes)}) and no hsrm "
                "record says which is the reward; name it with --reward-output INDEX or LABEL "
                "(RewardScorer(reward_output=...))"
            )
        self.max_length = resolve_max_length(
            max_length, self.record, self.model.config, protocol=protocol_max_length, protocol_name=protocol_name
        )
        self.batch_size, self.max_tokens, self.layout = batch_size, max_tokens, layout
        self.share_prompts = share_prompts
        self.progress = progress
        self.sharding = None  # a ShardedScoring (hsrm.shards): the CLI's verbs score in shards, across processes
        self.truncation = TruncationStats()
        self._truncation_lock = threading.Lock()  # hsrm serve encodes requests in several threads at once
        # TRL names a reward function by its __name__ in logs ("rewards/<name>/mean").
        self.__name__ = name or "reward_" + re.sub(
            r"[^A-Za-z0-9_]+", "_", Path(self.model_dir.rstrip("/")).name or "model"
        )

    @classmethod
    def from_options(cls, options, model: str | None = None, **keywords: Any) -> RewardScorer:
        """The scorer a verb's options describe: its ``--model`` (or ``model``) with the engine's options,
        :class:`hsrm.options.EngineInput`, handed on as one object."""
        return cls(model or options.model, **options.engine_settings(), **keywords)

    def _one_hot(self, output: int | str) -> list[float]:
        """Weights that pick one output of the head, named by index or by label."""
        text = str(output)
        index = int(text) if text.lstrip("-").isdigit() else None
        id2label = getattr(self.model.config, "id2label", None) or {}
        labels = [str(id2label.get(i, id2label.get(str(i), ""))) for i in range(self.num_labels)]
        for names in (self.attributes, labels):  # hsrm's output names, then the config's labels (LABEL_1)
            if index is None and text in names:
                index = names.index(text)
        if index is None or not 0 <= index < self.num_labels:
            raise InputError(
                f"--reward-output {output!r}: not an output of {self.model_dir}'s head; give an index 0…"
                f"{self.num_labels - 1} or one of {self.attributes}"
            )
        return [1.0 if i == index else 0.0 for i in range(self.num_labels)]

    @property
    def meta(self) -> dict[str, Any]:
        """The model record as a plain dict (what config.json's ``hsrm`` block holds)."""
        return self.record.to_dict()

    def _attribute_names(self) -> list[str]:
        if self.record.attributes and len(self.record.attributes) == self.num_labels:
            return list(self.record.attributes)
        id2label = getattr(self.model.config, "id2label", None) or {}
        labels = [id2label.get(i, id2label.get(str(i))) for i in range(self.num_labels)]
        if all(labels) and not all(re.fullmatch(r"LABEL_\d+", str(label)) for label in labels):
            return [str(label) for label in labels]
        return self.record.output_names(self.num_labels)

    # -- tokenization
    def encode(self, prompt: Any, response: str) -> list[int]:
        """Token ids of prompt (text or chat messages) + response, as training encodes them."""
        return self.encode_many([prompt], [response])[0]

    def encode_many(self, prompts: Sequence[Any], responses: Sequence[str]) -> list[list[int]]:
        """:meth:`encode` for many pairs at once: the same ids, from one chat-template call and one
        fast-tokenizer batch instead of one of each per pair."""
        ids, cuts = encode_batch(self.tokenizer, [to_messages(p) for p in prompts], list(responses), self.max_length)
        return self._counted(ids, cuts)

    def encode_text(self, text: str) -> list[int]:
        """Token ids of a text already formatted for this model (no template applied, no special
        tokens added), cut from the left like :meth:`encode`."""
        return self.encode_texts([text])[0]

    def encode_texts(self, texts: Sequence[str]) -> list[list[int]]:
        """:meth:`encode_text` for many texts, in one tokenizer batch."""
        ids, cuts = encode_texts(self.tokenizer, list(texts), self.max_length)
        return self._counted(ids, cuts)

    def _counted(self, ids: list[list[int]], cuts: list[int]) -> list[list[int]]:
        with self._truncation_lock:
            self.truncation.add(cuts)
        return ids

    # -- scoring
    def score_ids(
        self, sequences: Sequence[Sequence[int]], *, all_outputs: bool = False, desc: str = "scoring"
    ) -> torch.Tensor:
        """Rewards of token sequences through the engine: (n,) scalar rewards, or (n, outputs) with ``all_outputs``."""
        engine = {
            "layout": self.layout,
            "pad_id": self.tokenizer.pad_token_id,
            "batch_size": self.batch_size,
            "max_tokens": self.max_tokens,
            "attribute_weights": self.attribute_weights,
            "all_outputs": all_outputs,
            "progress": self.progress,
            "desc": desc,
            "share_prompts": self.share_prompts,
        }
        if self.sharding is not None:
            return self.sharding.score(self.model, sequences, **engine)
        return score_sequences(self.model, sequences, **engine)

    def shard(self, output: str | os.PathLike) -> ShardedScoring:
        """Score from now on in shards, spread over this launch's processes (torchrun, accelerate) and
        kept in ``OUTPUT.parts/`` until the caller has written ``output`` (hsrm.shards)."""
        from .shards import ShardedScoring, model_identity, parts_folder

        parameter = next(self.model.parameters())
        key = {"verb": "scoring", **model_identity(self.model_dir), "dtype": str(parameter.dtype)}
        self.sharding = ShardedScoring(parts_folder(output), key)
        return self.sharding

    def scalar(self, outputs: torch.Tensor) -> torch.Tensor:
        """The scalar reward of head outputs (n, outputs), with this scorer's attribute weights."""
        from .modeling import scalar_reward

        return scalar_reward(outputs, self.attribute_weights)

    def score(self, prompts: Sequence[Any], responses: Sequence[str], *, desc: str = "scoring") -> list[float]:
        """Scalar rewards of (prompt, response) pairs; prompts are text or chat-message lists."""
        if len(prompts) != len(responses):
            raise InputError(f"{len(prompts)} prompts for {len(responses)} responses; they must pair up one to one")
        return self.score_ids(self.encode_many(prompts, responses), desc=desc).tolist()

    def __call__(self, prompts: Sequence[Any], completions: Sequence[Any], **kwargs) -> list[float]:
        """TRL reward-function signature; extra columns (``completion_ids``, ``trainer_state`` …) are ignored."""
        if len(prompts) != len(completions):
            raise InputError(f"{len(prompts)} prompts for {len(completions)} completions")
        split = [
            split_completion(prompt, completion, index)
            for index, (prompt, completion) in enumerate(zip(prompts, completions))
        ]
        sequences = self.encode_many([messages for messages, _ in split], [response for _, response in split])
        return self.score_ids(sequences, desc="rewards").tolist()

    def __repr__(self) -> str:
        return f"RewardScorer({self.model_dir!r}, outputs={self.attributes}, max_length={self.max_length})"


def nonfinite_rewards_message(rewards: Sequence[float], where: str) -> str | None:
    """What to tell the user when a model returned NaN or infinite rewards (``None`` when all are
    finite): the first items by index and how many. ``hsrm score``, ``hsrm evaluate`` and ``hsrm
    serve`` refuse such rewards with it: JSON has no NaN, and a NaN ranks and compares as nothing."""
    import math

    broken = [index for index, reward in enumerate(rewards) if not math.isfinite(reward)]
    if not broken:
        return None
    shown = f"{broken[:10]}"[:-1] + (", …]" if len(broken) > 10 else "]")
    return (
        f"the reward model returned a non-finite reward (NaN or infinity) for item(s) {shown} ({len(broken)} of "
        f"{len(rewards)}) {where}: its weights, or the dtype it runs in, overflow (try --dtype float32)"
    )


def score(
    model: str | RewardScorer, prompts: Sequence[Any], responses: Sequence[str], **scorer_options: Any
) -> list[float]:
    """Scalar rewards of (prompt, response) pairs by the reward model at ``model`` (a folder, a Hub id or
    a :class:`RewardScorer`); ``scorer_options`` are :class:`RewardScorer`'s (``batch_size``, ``dtype`` …)."""
    if isinstance(model, RewardScorer):
        if scorer_options:
            raise TypeError(
                f"score: options {sorted(scorer_options)} apply when loading a model, not to a RewardScorer"
            )
        return model.score(prompts, responses)
    return RewardScorer(model, **scorer_options).score(prompts, responses)


# --------------------------------------------------------------------------------- hsrm score
def group_candidates(rows: Iterable[dict], source: str) -> list[dict]:
    """Rows → one group per prompt: ``{prompt, responses, rows, id}``.

    A row is ``{prompt, responses: [...]}`` (a group by itself) or ``{prompt, response}``; rows of
    the second kind that share a prompt are gathered, in file order, into one Best-of-N group.
    """
    groups: list[dict] = []
    by_prompt: dict[str, dict] = {}
    for index, row in enumerate(rows):
        if not isinstance(row, dict):
            raise DataError(source, index, None, "expected an object per row")
        if row.get("prompt") is None:
            raise DataError(source, index, "prompt", "missing")
        prompt = to_messages(row["prompt"], source, index)
        if "responses" in row:
            responses = row["responses"]
            if not isinstance(responses, list) or not responses:
                raise DataError(source, index, "responses", "expected a non-empty list of responses")
            texts = [response_text(r, source, index, f"responses[{k}]") for k, r in enumerate(responses)]
            groups.append(
                {"prompt": row["prompt"], "messages": prompt, "responses": texts, "rows": [index], "id": row.get("id")}
            )
        elif "response" in row:
            text = response_text(row["response"], source, index, "response")
            key = json.dumps(prompt, sort_keys=True)
            if key not in by_prompt:
                by_prompt[key] = {
                    "prompt": row["prompt"],
                    "messages": prompt,
                    "responses": [],
                    "rows": [],
                    "id": row.get("id"),
                }
                groups.append(by_prompt[key])
            by_prompt[key]["responses"].append(text)
            by_prompt[key]["rows"].append(index)
        else:
            raise DataError(source, index, "responses", "missing: give 'responses' (a list) or 'response' (one text)")
    return groups


def score_file(
    scorer: RewardScorer, data: str, output: str | None = None, *, write: bool = True
) -> tuple[Path, list[dict]]:
    """Score every candidate of ``data`` and write one JSON line per prompt group with
    ``rewards`` (one per response, in order) and ``best_index`` (the Best-of-N choice).
    ``write=False``: return the rows without writing (the other processes of a launched job)."""
    groups = group_candidates(read_rows(data), str(data))
    if not groups:
        raise InputError(f"{data}: no rows to score")
    owner = [g for g, group in enumerate(groups) for _ in group["responses"]]
    sequences = scorer.encode_many(
        [groups[g]["messages"] for g in owner], [response for group in groups for response in group["responses"]]
    )
    rewards = scorer.score_ids(sequences, desc="scoring").tolist()
    refusal = nonfinite_rewards_message(rewards, f"of {data}")
    if refusal:  # a NaN would be written as a NaN literal (not JSON) and picked as the best of nothing
        raise InputError(refusal)
    results: list[dict] = [{"rewards": []} for _ in groups]
    for g, reward in zip(owner, rewards):
        results[g]["rewards"].append(reward)
    out_rows = []
    for group, result in zip(groups, results):
        best = best_of_n(result["rewards"])
        row = {
            "prompt": group["prompt"],
            "responses": group["responses"],
            "rewards": result["rewards"],
            "best_index": best,
            "best_response": group["responses"][best],
            "rows": group["rows"],
        }
        if group["id"] is not None:
            row = {"id": group["id"], **row}
        out_rows.append(row)
    path = Path(output or default_scores_path(data))
    return (atomic_write_jsonl(path, out_rows) if write else path), out_rows


def default_scores_path(data: str) -> Path:
    """``<data name>.scored.jsonl`` in the current folder."""
    return Path(f"{Path(str(data)).name.split('.')[0] or 'scores'}.scored.jsonl")


def main(argv: list[str] | None = None) -> Path:
    from .options import ScoreOptions, parse_options, print_result

    opts = parse_options(ScoreOptions, argv, prog="hsrm score", description=ScoreOptions.__doc__)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    output = opts.output or default_scores_path(opts.data)
    check_output(output, inputs=[opts.data, opts.model], overwrite=opts.overwrite)  # before minutes of scoring
    scorer = RewardScorer.from_options(opts, progress=True)
    sharding = scorer.shard(output)  # across the processes of torchrun/accelerate launch; resumable
    path, rows = score_file(scorer, opts.data, output, write=sharding.rank == 0)
    sharding.remove_parts()
    if sharding.rank != 0:
        return path
    n_responses = sum(len(r["responses"]) for r in rows)
    summary = (
        f"scored {n_responses} responses to {len(rows)} prompts with {opts.model} → {path}"
        + (f" ({sharding.world} processes)" if sharding.world > 1 else "")
        + (f"\nreused {sharding.reused} rewards from {sharding.parts}" if sharding.reused else "")
        + f"\ntruncation: {scorer.truncation.summary()}"
    )
    print_result(
        {
            "output": str(path),
            "responses": n_responses,
            "prompts": len(rows),
            "max_length": scorer.max_length,
            "truncation": scorer.truncation.summary(),
            "rows": rows,
        },
        summary,
        opts.json,
    )
    return path
