"""Token-budget batching: micro-batches filled up to a number of tokens instead of a number of items,
the two sides of a pair kept together, every item once per epoch across processes."""

from __future__ import annotations

import logging
import random
from collections.abc import Iterator, Sequence
from typing import Literal

from ..errors import InputError

logger = logging.getLogger(__name__)


Cost = Literal["packed", "padded"]


def batch_cost(items: Sequence[Sequence[int]], cost: Cost) -> int:
    """Tokens a micro-batch occupies: the sum of all lengths when packed; rows × longest when padded.

    >>> batch_cost([(3, 1), (2, 2)], "packed"), batch_cost([(3, 1), (2, 2)], "padded")
    (8, 12)
    """
    lengths = [n for item in items for n in item]
    return sum(lengths) if cost == "packed" else len(lengths) * max(lengths)


def token_budget_batches(
    item_lengths: Sequence[Sequence[int]], max_tokens: int, cost: Cost = "packed", order: Sequence[int] | None = None
) -> list[list[int]]:
    """Group items (a pair = its two lengths, a rated response = one) into micro-batches of at most
    ``max_tokens`` tokens, longest first. An item is never split; one that alone exceeds the budget
    gets a micro-batch of its own.

    Padded: consecutive items in length order (so a batch's rows have similar lengths). Packed:
    the longest remaining items while they fit, then topped up with the shortest ones, which fills
    rows close to the budget. ``order`` (a permutation) breaks ties between equal lengths.

    >>> token_budget_batches([(5,), (1,), (4,), (2,), (3,)], 6, "packed")
    [[0, 1], [2, 3], [4]]
    >>> token_budget_batches([(5,), (1,), (4,), (2,), (3,)], 6, "padded")
    [[0], [2], [4, 3], [1]]
    """
    if max_tokens is None or max_tokens < 1:
        raise InputError(f"max_tokens_per_batch must be a positive number of tokens, got {max_tokens!r}")
    if cost not in ("packed", "padded"):
        raise InputError(f"cost must be 'packed' or 'padded', not {cost!r}")
    items = [tuple(lengths) for lengths in item_lengths]
    rank = {index: r for r, index in enumerate(order)} if order is not None else {}
    key = (
        (lambda i: (-sum(items[i]), rank.get(i, i)))
        if cost == "packed"
        else (lambda i: (-max(items[i]), rank.get(i, i)))
    )
    queue = sorted(range(len(items)), key=key)
    batches: list[list[int]] = []
    head, tail = 0, len(queue) - 1
    while head <= tail:
        batch = [queue[head]]
        head += 1
        if cost == "padded":
            width, rows = max(items[batch[0]]), len(items[batch[0]])
            while head <= tail and (rows + len(items[queue[head]])) * width <= max_tokens:
                rows += len(items[queue[head]])
                batch.append(queue[head])
                head += 1
        else:
            used = sum(items[batch[0]])
            while head <= tail and used + sum(items[queue[head]]) <= max_tokens:
                used += sum(items[queue[head]])
                batch.append(queue[head])
                head += 1
            while head <= tail and used + sum(items[queue[tail]]) <= max_tokens:
                used += sum(items[queue[tail]])
                batch.append(queue[tail])
                tail -= 1
        batches.append(batch)
    return batches


class TokenBudgetBatchSampler:
    """A batch sampler for ``DataLoader(batch_sampler=...)``: micro-batches of dataset indices
    holding at most ``max_tokens`` tokens (see :func:`token_budget_batches`).

    The grouping is computed once from a seeded shuffle (so ``len`` is fixed and a resumed run sees
    the same batches); the order of the micro-batches is reshuffled every epoch from ``seed`` and the
    epoch (``set_epoch``, which accelerate calls, or a count of iterations). Batches vary in size,
    so there is deliberately no ``batch_size`` attribute: accelerate then deals whole micro-batches to
    the processes in turn (process r takes micro-batches r, r + W, …), and ``num_replicas`` = W makes
    their count a multiple of W (the largest ones are split in two), so that accelerate never repeats
    a micro-batch to even the processes out: every item is seen exactly once per epoch.
    """

    drop_last = False

    def __init__(
        self,
        item_lengths: Sequence[Sequence[int] | int],
        max_tokens: int,
        *,
        cost: Cost = "packed",
        seed: int = 0,
        shuffle: bool = True,
        num_replicas: int = 1,
    ):
        items = [(n,) if isinstance(n, int) else tuple(n) for n in item_lengths]
        if not items:
            raise InputError("TokenBudgetBatchSampler: the dataset is empty")
        self.max_tokens, self.cost, self.seed, self.shuffle = max_tokens, cost, seed, shuffle
        order = list(range(len(items)))
        if shuffle:
            random.Random(seed).shuffle(order)
        self.batches = split_to_multiple(token_budget_batches(items, max_tokens, cost, order=order), num_replicas)
        oversized = sum(1 for b in self.batches if len(b) == 1 and batch_cost([items[b[0]]], cost) > max_tokens)
        if oversized:
            logger.warning(
                "%d items exceed max_tokens_per_batch=%d on their own; each goes in a micro-batch alone",
                oversized,
                max_tokens,
            )
        self.epoch = 0
        self._explicit_epoch = False

    def set_epoch(self, epoch: int) -> None:
        self.epoch, self._explicit_epoch = int(epoch), True

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[list[int]]:
        order = list(range(len(self.batches)))
        if self.shuffle:
            random.Random(self.seed * 1_000_003 + self.epoch).shuffle(order)
        if not self._explicit_epoch:
            self.epoch += 1
        for index in order:
            yield list(self.batches[index])


def split_to_multiple(batches: list[list[int]], multiple: int) -> list[list[int]]:
    """Split the largest micro-batches in two until their count is a multiple of ``multiple`` (the
    number of processes); each item stays in exactly one micro-batch.

    >>> split_to_multiple([[0, 1, 2, 3], [4, 5], [6]], 2)
    [[0, 1], [2, 3], [4, 5], [6]]
    """
    batches = [list(b) for b in batches]
    while len(batches) % multiple:
        largest = max(range(len(batches)), key=lambda i: (len(batches[i]), -i))
        if len(batches[largest]) < 2:
            raise InputError(
                f"{sum(map(len, batches))} items cannot make a multiple of {multiple} micro-batches: "
                "fewer items than processes"
            )
        half = len(batches[largest]) // 2
        batches[largest : largest + 1] = [batches[largest][:half], batches[largest][half:]]
    return batches


def dataset_item_lengths(dataset, *, shared_prompts: bool = False) -> list[tuple[int, ...]]:
    """Token lengths per item of a tokenized pairs (``chosen_ids``, ``rejected_ids``) or ratings
    (``input_ids``) dataset: the rows each item adds to a micro-batch. A pair is two rows, or with
    ``shared_prompts`` the rows :class:`hsrm.data.collators.SharedPromptPairCollator` makes of it —
    one row of the tokens it computes when its sides share a prompt — so a budget counts what is computed."""
    columns = getattr(dataset, "column_names", None) or list(dataset[0].keys())
    if "chosen_ids" in columns and "rejected_ids" in columns:
        pairs = zip(dataset["chosen_ids"], dataset["rejected_ids"])
        if shared_prompts:
            from ..engine import pair_prompt_length

            return [
                (len(c) + len(r) - prompt,) if (prompt := pair_prompt_length(c, r)) else (len(c), len(r))
                for c, r in pairs
            ]
        return [(len(c), len(r)) for c, r in pairs]
    if "input_ids" in columns:
        return [(len(ids),) for ids in dataset["input_ids"]]
    raise InputError(
        f"cannot batch by tokens: the dataset has neither chosen_ids/rejected_ids nor input_ids (columns {columns})"
    )


def token_budget_dataloader(trainer):
    """The training DataLoader of a ``transformers.Trainer`` whose args set ``max_tokens_per_batch``:
    token-budget micro-batches (packed cost when ``padding_free``), prepared by accelerate."""
    from torch.utils.data import DataLoader

    args = trainer.args
    cost: Cost = "packed" if getattr(args, "padding_free", False) else "padded"
    shared = getattr(trainer.data_collator, "shares_prompts", False)
    sampler = TokenBudgetBatchSampler(
        dataset_item_lengths(trainer.train_dataset, shared_prompts=shared),
        args.max_tokens_per_batch,
        cost=cost,
        seed=args.data_seed if args.data_seed is not None else args.seed,
        num_replicas=args.world_size,
    )
    logger.info(
        "token-budget batching: %d micro-batches of ≤ %d %s tokens (per_device_train_batch_size is not used)",
        len(sampler),
        args.max_tokens_per_batch,
        cost,
    )
    workers = args.dataloader_num_workers
    loader = DataLoader(
        trainer.train_dataset,
        batch_sampler=sampler,
        collate_fn=trainer.data_collator,
        num_workers=workers,
        pin_memory=args.dataloader_pin_memory,
        persistent_workers=workers > 0 and args.dataloader_persistent_workers,
        prefetch_factor=args.dataloader_prefetch_factor if workers > 0 else None,
    )
    return trainer.accelerator.prepare(loader)
