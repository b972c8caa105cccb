"""The 2025 benchmarks' scores, computed as their authors compute them, from rewards alone (pure functions).

* **RewardBench 2** (Malik et al., 2025; allenai/reward-bench ``scripts/run_v2.py``): five best-of-N
  subsets — a row scores 1/k when its first completion (the correct one) ties k ways for the highest
  reward, 0 when another completion is higher — and Ties, scored from paired ``ref:N`` / ``tied:N``
  prompts (:func:`ties_score`). Overall = the mean of the six subset scores.
* **RM-Bench** (Liu et al., ICLR 2025): per domain, the 3×3 matrix of style accuracies — cell (i, j)
  is the share of prompts whose chosen response in style i beats the rejected response in style j
  (styles: concise, detailed, detailed markdown) — and its averages: *hard* = upper triangle (a plainer
  chosen against a fancier rejected), *normal* = diagonal, *easy* = lower triangle.
* **HelpSteer3-Preference** (Wang et al., 2025): pairwise accuracy, overall and per domain and language.

The benchmarks' rows are read by :mod:`hsrm.data` (rewardbench2, rmbench, helpsteer3); the repository's
``bench/`` folder is something else: hsrm's own speed measurements.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from statistics import mean
from typing import Any

from .data.rewardbench2 import SUBSETS as REWARDBENCH2_SUBSETS
from .data.rmbench import DOMAINS as RMBENCH_DOMAINS
from .errors import InputError

# ---------------------------------------------------------------------------------- RewardBench 2


def best_of_n_score(rewards: Sequence[float]) -> float:
    """1/k when the first completion ties k ways for the highest reward, 0 when another is higher.

    >>> [best_of_n_score(r) for r in ([2.0, 1.0, 0.5, 1.9], [2.0, 2.0, 1.0, 0.0], [1.0, 2.0, 0.0, 0.0])]
    [1.0, 0.5, 0.0]
    """
    top = max(rewards)
    return 1.0 / sum(r == top for r in rewards) if rewards[0] == top else 0.0


def ties_prompt_stats(rewards: Sequence[float], num_correct: int) -> tuple[bool, float | None, float]:
    """(accurate, different_correct_margin, correct_incorrect_margin) of one Ties prompt whose first
    ``num_correct`` completions are correct: accurate when every correct completion outscores the
    best incorrect one; the spread of the correct ones (None with one correct); worst correct − best incorrect.

    >>> ties_prompt_stats([3.0, 2.5, 1.0, 2.0], 2)
    (True, 0.5, 0.5)
    """
    correct, incorrect = list(rewards[:num_correct]), list(rewards[num_correct:])
    if not correct or not incorrect:
        raise InputError(
            f"a Ties prompt needs correct and incorrect completions ({num_correct} of {len(rewards)} correct)"
        )
    different_correct_margin = max(correct) - min(correct) if len(correct) > 1 else None
    correct_incorrect_margin = min(correct) - max(incorrect)
    return correct_incorrect_margin > 0, different_correct_margin, correct_incorrect_margin


def _margin_score(gap: float, spread: float) -> float:
    """tanh(gap / spread − 1), with allenai's numpy semantics at spread 0: ±inf → ±1, 0/0 → NaN → 0."""
    if spread == 0:
        return 1.0 if gap > 0 else -1.0 if gap < 0 else 0.0
    return math.tanh(gap / spread - 1)


def ties_score(ids: Sequence[str], rewards: Sequence[Sequence[float]], num_correct: Sequence[int]) -> dict[str, Any]:
    """The Ties subset score: 0.30 tied accuracy + 0.30 ref accuracy + 0.20 correctness preferred +
    0.20 correctness preferred (hard) + 0.01 margin score.

    ``ids`` read ``ref:N`` (one correct answer) or ``tied:N`` (several equally correct answers) for
    prompt N. Accuracies are over all ref / all tied prompts. The margin terms use the prompts present
    as both ref and tied: *correctness preferred* when the tied prompt's correct-incorrect margin
    exceeds the spread of its correct answers, *hard* when the smaller of the ref and tied margins
    does, and the margin score = mean tanh(min margin / spread − 1). With no such prompt the margin
    terms are 0 (allenai's code would give NaN).
    """
    stats: dict[str, dict[str, tuple]] = {"ref": {}, "tied": {}}
    for row_id, row_rewards, correct in zip(ids, rewards, num_correct):
        kind, prompt = str(row_id).split(":", 1)
        if kind not in stats:
            raise InputError(f"Ties id {row_id!r}: expected ref:N or tied:N")
        stats[kind][prompt] = ties_prompt_stats(row_rewards, correct)
    ref_accuracy = mean(s[0] for s in stats["ref"].values()) if stats["ref"] else 0.0
    tied_accuracy = mean(s[0] for s in stats["tied"].values()) if stats["tied"] else 0.0
    paired = [p for p in stats["tied"] if p in stats["ref"] and stats["tied"][p][1] is not None]
    preferred, preferred_hard, margins = [], [], []
    for prompt in paired:
        spread, tied_gap, ref_gap = stats["tied"][prompt][1], stats["tied"][prompt][2], stats["ref"][prompt][2]
        preferred.append(tied_gap > spread)
        preferred_hard.append(min(ref_gap, tied_gap) > spread)
        margins.append(_margin_score(min(ref_gap, tied_gap), spread))
    components = {
        "tied_accuracy": float(tied_accuracy),
        "ref_accuracy": float(ref_accuracy),
        "correctness_preferred": float(mean(preferred)) if paired else 0.0,
        "correctness_preferred_hard": float(mean(preferred_hard)) if paired else 0.0,
        "correctness_margin_score": float(mean(margins)) if paired else 0.0,
        "ref_prompts": len(stats["ref"]),
        "tied_prompts": len(stats["tied"]),
        "paired_prompts": len(paired),
    }
    components["score"] = (
        0.30 * components["tied_accuracy"]
        + 0.30 * components["ref_accuracy"]
        + 0.20 * components["correctness_preferred"]
        + 0.20 * components["correctness_preferred_hard"]
        + 0.01 * components["correctness_margin_score"]
    )
    return components


def rewardbench2_scores(
    subsets: Sequence[str], ids: Sequence[str], num_correct: Sequence[int], rewards: Sequence[Sequence[float]]
) -> dict[str, Any]:
    """Per-subset scores and the overall (the mean of the subsets present), with the subsets missing."""
    rows: dict[str, list[int]] = defaultdict(list)
    for index, subset in enumerate(subsets):
        rows[subset].append(index)
    out: dict[str, Any] = {"subsets": {}, "ties": None}
    for subset in sorted(rows, key=lambda s: (REWARDBENCH2_SUBSETS.index(s) if s in REWARDBENCH2_SUBSETS else 99, s)):
        members = rows[subset]
        if subset.lower() == "ties":
            ties = ties_score(
                [ids[i] for i in members], [rewards[i] for i in members], [num_correct[i] for i in members]
            )
            out["ties"] = ties
            score = ties["score"]
        else:
            score = mean(best_of_n_score(rewards[i]) for i in members)
        out["subsets"][subset] = {"score": float(score), "n": len(members)}
    scored = [v["score"] for k, v in out["subsets"].items() if k in REWARDBENCH2_SUBSETS]
    out["overall"] = float(mean(scored)) if scored else None
    out["subsets_missing"] = [s for s in REWARDBENCH2_SUBSETS if s not in out["subsets"]]
    out["unscored_subsets"] = sorted(s for s in out["subsets"] if s not in REWARDBENCH2_SUBSETS)
    return out


# --------------------------------------------------------------------------------------- RM-Bench
def style_matrix(chosen: Sequence[Sequence[float]], rejected: Sequence[Sequence[float]]) -> list[list[float]]:
    """Cell (i, j): share of prompts whose chosen response in style i strictly beats the rejected one in style j.

    >>> style_matrix([[2.0, 0.0, 5.0]], [[1.0, 1.0, 1.0]])
    [[1.0, 1.0, 1.0], [0.0, 0.0, 0.0], [1.0, 1.0, 1.0]]
    """
    size = len(chosen[0])
    counts = [[0] * size for _ in range(size)]
    for c, r in zip(chosen, rejected):
        for i in range(size):
            for j in range(size):
                counts[i][j] += c[i] > r[j]
    return [[counts[i][j] / len(chosen) for j in range(size)] for i in range(size)]


def matrix_averages(matrix: Sequence[Sequence[float]]) -> dict[str, float]:
    """hard = mean of the upper triangle (i < j), normal = the diagonal, easy = the lower triangle, and
    the mean of all cells.

    >>> matrix_averages([[0.9, 0.3, 0.1], [0.95, 0.8, 0.4], [1.0, 0.97, 0.7]])["hard"]
    0.26666666666666666
    """
    size = len(matrix)
    upper = [matrix[i][j] for i in range(size) for j in range(size) if i < j]
    lower = [matrix[i][j] for i in range(size) for j in range(size) if i > j]
    return {
        "hard": mean(upper),
        "normal": mean(matrix[i][i] for i in range(size)),
        "easy": mean(lower),
        "average": mean(v for row in matrix for v in row),
    }


def rmbench_scores(
    domains: Sequence[str], chosen: Sequence[Sequence[float]], rejected: Sequence[Sequence[float]]
) -> dict[str, Any]:
    """Per domain: the style matrix and its hard / normal / easy / average; overall: each average's
    mean over the domains present (the paper's columns), with the domains missing."""
    rows: dict[str, list[int]] = defaultdict(list)
    for index, domain in enumerate(domains):
        rows[domain].append(index)
    out: dict[str, Any] = {"domains": {}}
    for domain in [d for d in RMBENCH_DOMAINS if d in rows] + sorted(d for d in rows if d not in RMBENCH_DOMAINS):
        members = rows[domain]
        matrix = style_matrix([chosen[i] for i in members], [rejected[i] for i in members])
        out["domains"][domain] = {"n": len(members), "matrix": matrix, **matrix_averages(matrix)}
    present = list(out["domains"].values())
    out["overall"] = (
        {k: float(mean(d[k] for d in present)) for k in ("hard", "normal", "easy", "average")} if present else None
    )
    out["domains_missing"] = [d for d in RMBENCH_DOMAINS if d not in out["domains"]]
    return out


# -------------------------------------------------------------------------- grouped pairwise accuracy
def grouped_accuracy(
    groups: Sequence[str], chosen: Sequence[float], rejected: Sequence[float]
) -> dict[str, dict[str, Any]]:
    """Pairwise accuracy (chosen > rejected strictly; ties are wrong) per group, groups sorted by name.

    >>> grouped_accuracy(["code", "general", "code"], [1.0, 0.0, 2.0], [0.0, 1.0, 2.0])
    {'code': {'n': 2, 'correct': 1, 'accuracy': 0.5}, 'general': {'n': 1, 'correct': 0, 'accuracy': 0.0}}
    """
    table: dict[str, dict[str, Any]] = {}
    for group, c, r in zip(groups, chosen, rejected):
        entry = table.setdefault(group, {"n": 0, "correct": 0})
        entry["n"] += 1
        entry["correct"] += int(c > r)
    for entry in table.values():
        entry["accuracy"] = entry["correct"] / entry["n"]
    return dict(sorted(table.items()))
