"""Score responses with a reward model: batched, length-sorted, the same way training evaluates.

    hsrm score --model runs/scaled-bt --data candidates.jsonl --output scored.jsonl

Every reward in hsrm goes through :func:`score_token_ids`: the text is rendered with the reward
model's own chat template and cut from the left (``hsrm.data.render.encode``), sequences are
sorted by length so each batch pads little, and the reward is read at the last real token
(``hsrm.modeling.reward_forward``). Evaluation (``hsrm evaluate``), the ExPO factor search and
``hsrm score`` all call it, so a text gets the same reward everywhere and whatever the batch size
(reward-bench#137).

:class:`RewardScorer` is also a reward function for TRL's online trainers::

    scorer = RewardScorer("runs/scaled-bt")
    trainer = RLOOTrainer(model=policy, reward_funcs=scorer, args=RLOOConfig(num_generations=4), ...)

It is deliberately *not* an ``nn.Module``: TRL would then call it as a bare sequence classifier
with the policy's text, skipping the reward model's own chat template and left truncation.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch

from .data.io import DataError, read_rows
from .data.messages import response_text, to_messages
from .data.render import TruncationStats, encode, pad_sequences
from .modeling import reward_forward, scalar_reward

logger = logging.getLogger(__name__)

DEFAULT_MAX_LENGTH = 2048  # RewardBench's protocol
DEFAULT_BATCH_SIZE = 8
HSRM_CONFIG_KEY = "hsrm"  # the metadata block hsrm training writes into config.json


# ------------------------------------------------------------------------------ the one scorer
def length_sorted_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices grouped into batches of similar length, longest first (an out-of-memory error shows
    up on the first batch, not after an hour).

    >>> length_sorted_batches([3, 9, 1, 7, 5], 2)
    [[1, 3], [4, 0], [2]]
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    return [order[start:start + batch_size] for start in range(0, len(order), batch_size)]


@torch.inference_mode()
def score_token_ids(model, sequences: Sequence[Sequence[int]], pad_id: int, *, batch_size: int = DEFAULT_BATCH_SIZE,
                    attribute_weights: Sequence[float] | None = None, all_outputs: bool = False,
                    progress: bool = True, desc: str = "scoring") -> torch.Tensor:
    """Rewards of pre-tokenized sequences, in input order, as float32 on the CPU.

    Returns shape (n,) — the scalar reward, ``scalar_reward(outputs, attribute_weights)`` — or,
    with ``all_outputs``, the raw head outputs of shape (n, num_labels). Batches are right-padded
    and the reward is read at each row's last position whose attention mask is 1, so padding
    never changes a reward beyond float rounding.
    """
    from tqdm.auto import tqdm

    if not sequences:
        return torch.zeros((0, model.config.num_labels) if all_outputs else (0,), dtype=torch.float32)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    results: list[torch.Tensor | None] = [None] * len(sequences)
    batches = length_sorted_batches([len(s) for s in sequences], batch_size)
    try:
        for batch in tqdm(batches, desc=desc, unit="batch", disable=not progress, leave=False):
            ids, mask = pad_sequences([sequences[i] for i in batch], pad_id, "right")
            outputs = reward_forward(model, ids.to(device), mask.to(device)).float()
            values = outputs if all_outputs else scalar_reward(outputs, attribute_weights)
            for row, index in enumerate(batch):
                results[index] = values[row].cpu()
    finally:
        model.train(was_training)
    return torch.stack(results)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------ model metadata
def read_hsrm_metadata(model_dir: str) -> dict[str, Any]:
    """The ``hsrm`` block of a local folder's config.json (empty for other models and Hub ids)."""
    path = Path(model_dir) / "config.json"
    if not path.is_file():
        return {}
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err.msg}); the model folder is damaged") from None
    meta = config.get(HSRM_CONFIG_KEY) or {}
    return meta if isinstance(meta, dict) else {}


def pick_device(device: str | None = None) -> torch.device:
    """``None``/"auto": this process's GPU when there is one (so each accelerate rank scores on its
    own device), else the CPU."""
    if device not in (None, "auto"):
        return torch.device(device)
    if torch.cuda.is_available():
        # LOCAL_RANK is set by accelerate/torchrun before any CUDA device is selected; without it
        # every rank of an RLOO run would put its reward model on GPU 0.
        local_rank = int(os.environ.get("LOCAL_RANK", -1))
        index = local_rank if 0 <= local_rank < torch.cuda.device_count() else torch.cuda.current_device()
        return torch.device("cuda", index)
    return torch.device("cpu")


def split_completion(prompt: Any, completion: Any, index: int = 0, source: str = "<completions>") -> tuple[list[dict], str]:
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
            raise DataError(source, index, "completion", f"assistant content is {type(content).__name__}, expected text")
        return messages, content
    if not isinstance(completion, str):
        raise DataError(source, index, "completion", f"expected text or a message list, got {type(completion).__name__}")
    # An empty generation is a legitimate (bad) completion to score, so no emptiness check here.
    return messages, completion


# ------------------------------------------------------------------------------------ scorer
class RewardScorer:
    """A reward model ready to score text, and a TRL reward function.

    ``RewardScorer(model_dir)(prompts, completions)`` returns one float per completion. Rewards
    are computed exactly as in training and ``hsrm evaluate``: the reward model's chat template,
    left truncation to ``max_length`` tokens, the head read at the last real token, and the
    ``attribute_weights`` stored in the model's config.json (HelpSteer2-Preference appendix E)
    when it has them (``attribute_weights=None`` there means: the first output).
    """

    def __init__(self, model_dir: str, *, batch_size: int = DEFAULT_BATCH_SIZE, max_length: int | None = DEFAULT_MAX_LENGTH,
                 dtype: str | torch.dtype = "float32", device: str | None = None,
                 attribute_weights: Sequence[float] | str | None = "auto", trust_remote_code: bool = False,
                 progress: bool = False, name: str | None = None):
        from transformers import AutoConfig

        from .modeling import check_model_folder, load_reward_model, resolve_model_path

        path = resolve_model_path(os.path.expanduser(model_dir) if isinstance(model_dir, str) else model_dir)
        if not os.path.isdir(path) and (path.startswith((".", "/", "~")) or path.count("/") > 1):
            raise FileNotFoundError(f"reward model folder {path} does not exist")
        check_model_folder(path)
        # Keep the head the folder has: asking for another size would silently re-initialise it.
        num_labels = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code).num_labels
        self.model, self.tokenizer = load_reward_model(path, num_labels=num_labels, dtype=dtype,
                                                       trust_remote_code=trust_remote_code)
        self.model.to(pick_device(device)).eval()
        self.model_dir = path
        self.meta = read_hsrm_metadata(path)
        self.num_labels = num_labels
        self.attribute_weights = self.meta.get("attribute_weights") if attribute_weights == "auto" else attribute_weights
        if self.attribute_weights is not None and len(self.attribute_weights) != num_labels:
            raise ValueError(f"{path}: {len(self.attribute_weights)} attribute weights for a head with {num_labels} outputs")
        self.attributes = self._attribute_names()
        self.batch_size = batch_size
        context = getattr(self.model.config, "max_position_embeddings", None)
        if max_length is not None and isinstance(context, int) and 0 < context < max_length:
            # Past the model's context the positions are meaningless (RoPE) or out of range (learned).
            logger.warning("max_length %d exceeds %s's context of %d tokens; using %d", max_length, path, context, context)
            max_length = context
        self.max_length = max_length
        self.progress = progress
        self.truncation = TruncationStats()
        # TRL names a reward function by its __name__ in logs ("rewards/<name>/mean").
        self.__name__ = name or "reward_" + re.sub(r"[^A-Za-z0-9_]+", "_", Path(path.rstrip("/")).name or "model")

    def _attribute_names(self) -> list[str]:
        names = self.meta.get("attributes")
        if isinstance(names, list) and len(names) == self.num_labels:
            return [str(n) for n in names]
        id2label = getattr(self.model.config, "id2label", None) or {}
        labels = [id2label.get(i, id2label.get(str(i))) for i in range(self.num_labels)]
        if all(labels) and not all(re.fullmatch(r"LABEL_\d+", str(label)) for label in labels):
            return [str(label) for label in labels]
        return ["reward"] if self.num_labels == 1 else [f"output_{i}" for i in range(self.num_labels)]

    # -- tokenization
    def encode(self, prompt: Any, response: str) -> list[int]:
        """Token ids of prompt (text or chat messages) + response, as training encodes them."""
        return encode(self.tokenizer, to_messages(prompt), response, self.max_length, self.truncation)

    # -- scoring
    def score_ids(self, sequences: Sequence[Sequence[int]], *, all_outputs: bool = False, desc: str = "scoring") -> torch.Tensor:
        return score_token_ids(self.model, sequences, self.tokenizer.pad_token_id, batch_size=self.batch_size,
                               attribute_weights=self.attribute_weights, all_outputs=all_outputs,
                               progress=self.progress, desc=desc)

    def score(self, prompts: Sequence[Any], responses: Sequence[str]) -> list[float]:
        """Scalar rewards of (prompt, response) pairs; prompts are text or chat-message lists."""
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts for {len(responses)} responses; they must pair up one to one")
        return self.score_ids([self.encode(p, r) for p, r in zip(prompts, responses)]).tolist()

    def __call__(self, prompts: Sequence[Any], completions: Sequence[Any], **kwargs) -> list[float]:
        """TRL reward-function signature; extra columns (``completion_ids``, ``trainer_state`` …) are ignored."""
        if len(prompts) != len(completions):
            raise ValueError(f"{len(prompts)} prompts for {len(completions)} completions")
        sequences = []
        for index, (prompt, completion) in enumerate(zip(prompts, completions)):
            messages, response = split_completion(prompt, completion, index)
            sequences.append(encode(self.tokenizer, messages, response, self.max_length, self.truncation))
        return self.score_ids(sequences, desc="rewards").tolist()

    def __repr__(self) -> str:
        return f"RewardScorer({self.model_dir!r}, outputs={self.attributes}, max_length={self.max_length})"


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
            groups.append({"prompt": row["prompt"], "messages": prompt, "responses": texts, "rows": [index],
                           "id": row.get("id")})
        elif "response" in row:
            text = response_text(row["response"], source, index, "response")
            key = json.dumps(prompt, sort_keys=True)
            if key not in by_prompt:
                by_prompt[key] = {"prompt": row["prompt"], "messages": prompt, "responses": [], "rows": [], "id": row.get("id")}
                groups.append(by_prompt[key])
            by_prompt[key]["responses"].append(text)
            by_prompt[key]["rows"].append(index)
        else:
            raise DataError(source, index, "responses", "missing: give 'responses' (a list) or 'response' (one text)")
    return groups


def best_of_n(rewards: Sequence[float]) -> int:
    """Index of the highest reward; the first one on ties."""
    return max(range(len(rewards)), key=lambda i: (rewards[i], -i))


def write_jsonl_atomic(path: str | os.PathLike, rows: Iterable[dict]) -> Path:
    """Write to a temporary file beside ``path`` then rename: a crash never leaves half a file."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            for row in rows:
                out.write(json.dumps(row, ensure_ascii=False) + "\n")
        os.replace(tmp, target)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return target


def score_file(scorer: RewardScorer, data: str, output: str | None = None) -> tuple[Path, list[dict]]:
    """Score every candidate of ``data`` and write one JSON line per prompt group with
    ``rewards`` (one per response, in order) and ``best_index`` (the Best-of-N choice)."""
    groups = group_candidates(read_rows(data), str(data))
    if not groups:
        raise ValueError(f"{data}: no rows to score")
    sequences, owner = [], []
    for g, group in enumerate(groups):
        for response in group["responses"]:
            sequences.append(encode(scorer.tokenizer, group["messages"], response, scorer.max_length, scorer.truncation))
            owner.append(g)
    rewards = scorer.score_ids(sequences, desc="scoring").tolist()
    results: list[dict] = [{"rewards": []} for _ in groups]
    for g, reward in zip(owner, rewards):
        results[g]["rewards"].append(reward)
    out_rows = []
    for group, result in zip(groups, results):
        best = best_of_n(result["rewards"])
        row = {"prompt": group["prompt"], "responses": group["responses"], "rewards": result["rewards"],
               "best_index": best, "best_response": group["responses"][best], "rows": group["rows"]}
        if group["id"] is not None:
            row = {"id": group["id"], **row}
        out_rows.append(row)
    if output is None:
        stem = Path(str(data)).name.split(".")[0] or "scores"
        output = f"{stem}.scored.jsonl"
    return write_jsonl_atomic(output, out_rows), out_rows


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hsrm score", description="Reward every response and pick the Best-of-N per prompt.")
    parser.add_argument("--model", required=True, help="reward model folder (any AutoModelForSequenceClassification)")
    parser.add_argument("--data", required=True, help="JSONL/JSON/Parquet rows {prompt, responses: [...]} or {prompt, response}")
    parser.add_argument("--output", help="where to write the scored JSONL (default: <data name>.scored.jsonl here)")
    parser.add_argument("--batch-size", "--batch_size", type=int, default=DEFAULT_BATCH_SIZE, help="sequences per forward pass")
    parser.add_argument("--max-length", "--max_length", type=int, default=DEFAULT_MAX_LENGTH, help="tokens kept per sequence (cut from the left)")
    parser.add_argument("--dtype", default="float32", help="float32 | bfloat16 | float16")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 … (default: GPU when present)")
    return parser


def main(argv: list[str] | None = None) -> Path:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    scorer = RewardScorer(args.model, batch_size=args.batch_size, max_length=args.max_length, dtype=args.dtype,
                          device=args.device, progress=True)
    path, rows = score_file(scorer, args.data, args.output)
    n_responses = sum(len(r["responses"]) for r in rows)
    print(f"scored {n_responses} responses to {len(rows)} prompts with {args.model} → {path}")
    print(f"truncation: {scorer.truncation.summary()}")
    return path
