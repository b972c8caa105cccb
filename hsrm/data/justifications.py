"""Preference justifications for the generative Pairwise Justifier (HelpSteer2-Preference).

Paper: Wang et al. (2024), HelpSteer2-Preference, section 3.2 "Pairwise Justifier" and appendix C.

Pre-processing of one free-text justification (appendix C):
  1. split it into sentences (at newlines and sentence ends);
  2. a *preference statement* is a sentence of the form "@Response 1/2 … better"; it is looked for
     in the first and in the last sentence (57.6 % / 27.5 % both / 7.3 % last only / 7.6 % none
     in the paper's data);
  3. a statement at both the front and the back: the trailing one is removed (duplicate);
  4. everything before the first "@Response N" of the statement is a prefix ("Therefore, ",
     "Overall, ", "For these reasons, ") and is stripped;
  5. a justification with no statement is dropped, and counted.
The rest of the text is the *preference elaboration*.

Sets (appendix C): *overall* = one justification per task, drawn at random among annotators whose
own preference equals the task's overall preference; *all* = the justifications of the (up to)
three most similar annotations of a task.

Targets (section 3.2 and its ablations): ``full`` = elaboration then statement (the paper's
format), ``statement`` = the statement alone, ``label`` = "@Response 1" / "@Response 2".

The justifier's prompt, exactly as in section 3.2, goes into one user turn of the chat template:

    {prompt} @Response 1:\\n{response_1}\\n@Response 2:\\n{response_2}\\n
    Between @Response 1 and @Response 2, which is better?

(one string: the line break after the last ``\\n`` is only this page's)

Flip augmentation swaps the two responses and rewrites every "@Response 1" ↔ "@Response 2" in
the target, so the verdict follows the content, not the position.
"""

from __future__ import annotations

import ast
import random
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ..errors import InputError
from .helpsteer import NEITHER_VALID, overall_preference, parse_annotations, three_most_similar
from .io import DataError, LoadReport, OnError, in_split, read_rows, require_text
from .messages import split_helpsteer_turns

JUSTIFICATION_SETS = ("overall", "all")
JUSTIFIER_TARGETS = ("full", "statement", "label")

JUSTIFIER_PROMPT_TEMPLATE = (
    "{prompt} @Response 1:\n{response_1}\n@Response 2:\n{response_2}\n"
    "Between @Response 1 and @Response 2, which is better?"
)
# Between the elaboration and the statement in a ``full`` target.
ELABORATION_STATEMENT_SEPARATOR = "\n"

# "@Response 1", "@response 2", "Response 1" (generated text may drop the @), "@Response2".
# The look-behind keeps a match from starting at the "R" of "@Response"; the look-ahead rejects
# "Response 12" and "Response 1st".
RESPONSE_MENTION = re.compile(r"(?<![\w@])@?response\s*([12])(?!\w)", re.IGNORECASE)
_BETTER = re.compile(r"\bbetter\b", re.IGNORECASE)
# "is not better", "isn't any better", "no better", "hardly better": not a preference for it.
_NEGATED_TAIL = re.compile(r"(?:\bnot|\bno|\bnever|\bhardly|n['’]t)(?:\s+\w+)?\s+$", re.IGNORECASE)
# A sentence ends at . ! ? (plus closing quotes/brackets) followed by space and a capital, digit,
# "@" or an opening quote; newlines always end one.
_SENTENCE_END = re.compile(r"[.!?]+[\"'”’)\]]*(\s+)(?=[\"'“‘(\[]?[A-Z0-9@])")
_ABBREVIATIONS = ("e.g", "i.e", "vs", "etc", "mr", "mrs", "ms", "dr", "st", "no", "fig", "approx")
# A bare label such as a label-only model produces: "@Response 2", "@Response 1."
_BARE_LABEL = re.compile(r"^\s*@?response\s*([12])\s*[.!]?\s*$", re.IGNORECASE)


# ------------------------------------------------------------------------------ sentence parsing
def sentence_spans(text: str) -> list[tuple[int, int]]:
    """(start, end) character spans of the sentences of ``text``, whitespace trimmed.

    A small stand-in for NLTK's sentence tokenizer plus newline splitting (appendix C): a newline
    always ends a sentence; ". ", "! ", "? " end one when a capital, digit, "@" or quote follows,
    except after common abbreviations ("e.g.", "vs.").
    """
    spans: list[tuple[int, int]] = []

    def add(start: int, end: int) -> None:
        piece = text[start:end]
        if piece.strip():
            lead = len(piece) - len(piece.lstrip())
            trail = len(piece) - len(piece.rstrip())
            spans.append((start + lead, end - trail))

    for line in re.finditer(r"[^\n]+", text):
        start = line.start()
        for boundary in _SENTENCE_END.finditer(text, line.start(), line.end()):
            word = re.search(r"(\S+)$", text[start : boundary.start()])
            if word and word.group(1).lower().rstrip(".") in _ABBREVIATIONS and boundary.group(0).startswith("."):
                continue
            add(start, boundary.start(1))
            start = boundary.end()
        add(start, line.end())
    return spans


def split_sentences(text: str) -> list[str]:
    return [text[s:e] for s, e in sentence_spans(text)]


def statement_label(sentence: str) -> int | None:
    """The response a sentence says is better (1 or 2), or None when it is not a preference statement.

    The label is the last "@Response N" before the first non-negated "better":
    "@Response 2 is better than @Response 1" → 2; "@Response 1 is longer, but @Response 2 is better" → 2;
    "@Response 1 is not better than @Response 2" → None.
    """
    for better in _BETTER.finditer(sentence):
        before = sentence[: better.start()]
        if _NEGATED_TAIL.search(before):
            continue
        mentions = list(RESPONSE_MENTION.finditer(before))
        if mentions:
            return int(mentions[-1].group(1))
    return None


def strip_statement_prefix(sentence: str) -> str:
    """Drop everything before the first "@Response N" ("Overall, @Response 1 …" → "@Response 1 …")."""
    first = RESPONSE_MENTION.search(sentence)
    return sentence[first.start() :] if first else sentence


@dataclass(frozen=True)
class SplitJustification:
    """A justification split as in appendix C. ``position``: where the statement was found
    (``front``, ``back`` or ``both``, in which case the trailing copy was removed)."""

    statement: str
    elaboration: str
    label: int
    position: str


def split_justification(text: str) -> SplitJustification | None:
    """Statement + elaboration of one justification, or None when it has no preference statement.

    >>> s = split_justification("@Response 2 is better. It is correct. Therefore, @Response 2 is better.")
    >>> s.statement, s.elaboration, s.label, s.position
    ('@Response 2 is better.', 'It is correct.', 2, 'both')
    """
    if not isinstance(text, str) or not text.strip():
        return None
    spans = sentence_spans(text)
    first, last = spans[0], spans[-1]
    first_label = statement_label(text[first[0] : first[1]])
    last_label = statement_label(text[last[0] : last[1]]) if len(spans) > 1 else None
    if first_label is not None:
        statement_span, label = first, first_label
        position = "both" if last_label is not None else "front"
        # A trailing statement repeats the leading one: remove it (appendix C).
        elaboration = text[first[1] : last[0]] if last_label is not None else text[first[1] :]
    elif last_label is not None:
        statement_span, label, position = last, last_label, "back"
        elaboration = text[: last[0]]
    else:
        return None
    statement = strip_statement_prefix(text[statement_span[0] : statement_span[1]]).strip()
    return SplitJustification(statement=statement, elaboration=elaboration.strip(), label=label, position=position)


def parse_verdict(text: str) -> int | None:
    """The response a generated justification prefers: the label of its LAST preference statement
    ("@Response N … better"), or a bare "@Response N" answer (label-only models). None when
    neither is found: the caller counts that as wrong and reports it."""
    if not isinstance(text, str):
        return None
    bare = _BARE_LABEL.match(text)
    if bare:
        return int(bare.group(1))
    for sentence in reversed(split_sentences(text)):
        label = statement_label(sentence)
        if label is not None:
            return label
    return None


# ------------------------------------------------------------------------------ targets and flips
def make_target(split: SplitJustification, target: str) -> str:
    """The assistant turn the justifier is trained to produce."""
    if target == "full":
        if not split.elaboration:
            return split.statement
        return f"{split.elaboration}{ELABORATION_STATEMENT_SEPARATOR}{split.statement}"
    if target == "statement":
        return split.statement
    if target == "label":
        return label_text(split.label)
    raise InputError(f"unknown justifier_target {target!r}; choose one of {JUSTIFIER_TARGETS}")


def label_text(label: int) -> str:
    if label not in (1, 2):
        raise InputError(f"a justifier label is 1 or 2, not {label!r}")
    return f"@Response {label}"


def swap_response_mentions(text: str) -> str:
    """Every "@Response 1" becomes "@Response 2" and vice versa (the rest of the text is unchanged).

    >>> swap_response_mentions("@Response 2 is better than @Response 1.")
    '@Response 1 is better than @Response 2.'
    """
    return RESPONSE_MENTION.sub(lambda m: m.group(0)[:-1] + ("2" if m.group(1) == "1" else "1"), text)


def flip_example(example: dict) -> dict:
    """The same comparison with the responses swapped, the target's mentions rewritten and the
    label moved (section 3.2, flip augmentation)."""
    flipped = dict(example)
    flipped["response_1"], flipped["response_2"] = example["response_2"], example["response_1"]
    flipped["target"] = swap_response_mentions(example["target"])
    flipped["label"] = 3 - int(example["label"])
    flipped["flipped"] = not example.get("flipped", False)
    return flipped


# ------------------------------------------------------------------------------------ the prompt
def prompt_text(prompt: str | Sequence[dict]) -> str:
    """``{prompt}`` of the template: a single user turn verbatim; a multi-turn conversation as
    "User: …" / "Assistant: …" lines, so the judged responses answer the conversation's last turn."""
    if isinstance(prompt, str):
        return prompt
    messages = list(prompt)
    if len(messages) == 1:
        return messages[0]["content"]
    return "\n".join(f"{m['role'].capitalize()}: {m['content']}" for m in messages)


def justifier_user_message(prompt: str | Sequence[dict], response_1: str, response_2: str) -> str:
    """The user turn, exactly the template of section 3.2."""
    return JUSTIFIER_PROMPT_TEMPLATE.format(prompt=prompt_text(prompt), response_1=response_1, response_2=response_2)


def justifier_messages(
    prompt: str | Sequence[dict], response_1: str, response_2: str, target: str | None = None
) -> list[dict]:
    messages = [{"role": "user", "content": justifier_user_message(prompt, response_1, response_2)}]
    if target is not None:
        messages.append({"role": "assistant", "content": target})
    return messages


# ---------------------------------------------------------------------------------- tokenization
def _balanced_keep(len_1: int, len_2: int, budget: int) -> tuple[int, int]:
    """How many tokens of each response to keep within ``budget``: the shorter keeps all it can,
    the longer takes the rest (water-filling), so one long response does not erase the other."""
    if budget <= 0:
        return 0, 0
    if len_1 + len_2 <= budget:
        return len_1, len_2
    short = min(len_1, len_2)
    if 2 * short <= budget:
        return (len_1, budget - len_1) if len_1 == short else (budget - len_2, len_2)
    return budget - budget // 2, budget // 2


def encode_justifier_prompt(
    tokenizer, prompt, response_1: str, response_2: str, max_length: int | None, reserve: int = 0, stats=None
) -> list[int]:
    """Token ids of the user turn plus the assistant header (``add_generation_prompt``), at most
    ``max_length - reserve`` long.

    Over-long prompts lose the *tails of the responses* (the longer one first), so the chat
    header, the question and "Between @Response 1 and @Response 2, which is better?" survive.
    Only when even empty responses do not fit is the prompt cut from the left.
    """

    from .render import token_ids

    def render(r1: str, r2: str) -> list[int]:
        text = tokenizer.apply_chat_template(
            justifier_messages(prompt, r1, r2), tokenize=False, add_generation_prompt=True
        )
        return token_ids(tokenizer, [text])[0]  # no special tokens added: the template holds BOS already

    ids = render(response_1, response_2)
    if stats is not None:
        stats.sequences += 1
    limit = None if max_length is None else max_length - reserve
    if limit is None or len(ids) <= limit:
        return ids
    original = len(ids)
    r1_ids, r2_ids = token_ids(tokenizer, [response_1, response_2])
    excess = len(ids) - limit
    for _ in range(6):  # decode → re-tokenize can shift a token or two at the cut; retry with more
        keep_1, keep_2 = _balanced_keep(len(r1_ids), len(r2_ids), len(r1_ids) + len(r2_ids) - excess)
        ids = render(tokenizer.decode(r1_ids[:keep_1]), tokenizer.decode(r2_ids[:keep_2]))
        if len(ids) <= limit or keep_1 + keep_2 == 0:
            break
        excess += len(ids) - limit
    if len(ids) > limit:
        ids = ids[-limit:] if limit > 0 else []
    if stats is not None:
        stats.truncated += 1
        stats.tokens_cut += original - len(ids)
    return ids


def truncation_summary(stats) -> str:
    """What :func:`encode_justifier_prompt` cut, in words (its cuts come from the response tails)."""
    return (
        f"{stats.truncated} of {stats.sequences} justifier prompts over max_length shortened "
        f"({stats.tokens_cut} tokens cut, from the ends of the responses)"
    )


def encode_justifier_example(
    tokenizer, prompt, response_1: str, response_2: str, target: str, max_length: int | None, stats=None
) -> tuple[list[int], list[int]] | None:
    """(input_ids, labels) for one training example: labels are -100 on the prompt and the
    assistant header, and the token ids on the assistant turn (the target and the template's
    end-of-turn, so the model learns to stop). None when the target alone does not fit.

    The prompt is tokenized exactly as at inference (:func:`encode_justifier_prompt`) and the
    assistant turn separately after it, so training and generation see the same prompt tokens.
    """
    (encoded,) = encode_justifier_examples(tokenizer, [prompt], [response_1], [response_2], [target], max_length)
    if encoded is None:
        return None
    ids, labels, tokens_cut = encoded
    if stats is not None:
        stats.sequences += 1
        stats.truncated += tokens_cut > 0
        stats.tokens_cut += tokens_cut
    return ids, labels


def encode_justifier_examples(
    tokenizer,
    prompts: Sequence,
    responses_1: Sequence[str],
    responses_2: Sequence[str],
    targets: Sequence[str],
    max_length: int | None,
) -> list[tuple[list[int], list[int], int] | None]:
    """:func:`encode_justifier_example` for many examples: (input_ids, labels, prompt tokens cut) or
    None each. One template call and one batch tokenizer call for all; only prompts over
    ``max_length`` go one by one through :func:`encode_justifier_prompt`'s response-tail cutting."""
    from .render import TruncationStats, token_ids

    messages = [justifier_messages(p, r1, r2, t) for p, r1, r2, t in zip(prompts, responses_1, responses_2, targets)]
    if not messages:
        return []
    fulls = tokenizer.apply_chat_template(messages, tokenize=False)
    # The user turn plus the assistant header: exactly what encode_justifier_prompt renders at inference.
    heads = tokenizer.apply_chat_template([m[:1] for m in messages], tokenize=False, add_generation_prompt=True)
    if not all(full.startswith(head) for full, head in zip(fulls, heads)):
        raise InputError(
            "the tokenizer's chat template renders the user turn differently with and without the "
            "assistant's answer, so the target tokens cannot be located; use a plain chat template"
        )
    ids = token_ids(tokenizer, heads + [full[len(head) :] for full, head in zip(fulls, heads)])
    n = len(messages)
    encoded: list[tuple[list[int], list[int], int] | None] = []
    for i, (head_ids, completion_ids) in enumerate(zip(ids[:n], ids[n:])):
        if max_length is not None and len(completion_ids) >= max_length:
            encoded.append(None)
            continue
        tokens_cut = 0
        if max_length is not None and len(head_ids) > max_length - len(completion_ids):
            cut = TruncationStats()
            head_ids = encode_justifier_prompt(
                tokenizer,
                prompts[i],
                responses_1[i],
                responses_2[i],
                max_length,
                reserve=len(completion_ids),
                stats=cut,
            )
            tokens_cut = cut.tokens_cut
        encoded.append((head_ids + list(completion_ids), [-100] * len(head_ids) + list(completion_ids), tokens_cut))
    return encoded


# ------------------------------------------------------------------------------------ data sets
@dataclass
class JustificationReport(LoadReport):
    """A LoadReport (tasks read, kept, dropped by reason) plus what happened to the justifications:
    where their statements sat, and how many were dropped and why."""

    justifications_read: int = 0
    justifications_kept: int = 0
    statement_positions: Counter = field(default_factory=Counter)  # front / back / both / none
    justifications_dropped: Counter = field(default_factory=Counter)
    flipped_added: int = 0

    def summary(self) -> str:
        positions = ", ".join(f"{k} {v}" for k, v in sorted(self.statement_positions.items()))
        dropped = "".join(f", dropped {n} ({reason})" for reason, n in sorted(self.justifications_dropped.items()))
        return (
            f"{super().summary()}; justifications: read {self.justifications_read}"
            + (f" (statement at: {positions})" if positions else "")
            + dropped
            + f", {self.justifications_kept} examples"
            + (f" + {self.flipped_added} flipped copies" if self.flipped_added else "")
        )


NO_STATEMENT = "no preference statement"
CONTRADICTS = "statement contradicts its annotator's strength"


def _annotation_list(raw: Any) -> list[dict]:
    if isinstance(raw, str):
        raw = ast.literal_eval(raw)  # parse_annotations has already checked that this parses
    return [item if isinstance(item, dict) else {"strength": item} for item in raw]


def _agrees(label: int, strength: int) -> bool:
    """A statement agrees with its annotator's strength (negative = response 1 better; 0 = none)."""
    return strength == 0 or (label == 1) == (strength < 0)


def justifications_of_row(
    row: dict, source: str, index: int, justification_set: str, rng: random.Random, report: JustificationReport
) -> list[SplitJustification]:
    """The split justifications one task contributes to a set ([] when the task is excluded).

    Every valid annotation's justification is split (and counted) first; the set then picks from
    those with a statement that agrees with their annotator's own strength.
    """
    raw = row.get("all_preferences_unprocessed")
    if raw is None:
        return _processed_justifications(row, source, index, justification_set, report)
    strengths = parse_annotations(raw, source, index)  # validates, with a DataError naming row and field
    annotations = _annotation_list(raw)
    if not any(isinstance(a.get("justification"), str) for a in annotations):
        return _processed_justifications(row, source, index, justification_set, report)
    overall, reason = overall_preference(strengths)
    if reason:
        report.drop(reason)
        return []
    valid = [(k, s) for k, s in enumerate(strengths) if s != NEITHER_VALID]
    usable: dict[int, SplitJustification] = {}
    for k, strength in valid:
        report.justifications_read += 1
        split = split_justification(annotations[k].get("justification") or "")
        report.statement_positions[split.position if split else "none"] += 1
        if split is None:
            report.justifications_dropped[NO_STATEMENT] += 1
        elif not _agrees(split.label, strength):
            report.justifications_dropped[CONTRADICTS] += 1
        else:
            usable[k] = split

    if justification_set == "all":
        # The three most similar annotations (section 2), mapped back to annotation indices.
        remaining = list(three_most_similar([s for _, s in valid]))
        picked = []
        for k, s in valid:
            if s in remaining:
                remaining.remove(s)
                picked.append(k)
        result = [usable[k] for k in picked if k in usable]
    else:
        # One annotator whose own preference equals the overall one, at random (appendix C). When
        # none has exactly it (e.g. [1, 1, 3] → overall 2), one preferring the same response.
        exact = [k for k, s in valid if s == overall and k in usable]
        same_side = [k for k, s in valid if s != 0 and (s < 0) == (overall < 0) and k in usable]
        pool = exact or same_side
        result = [usable[rng.choice(pool)]] if pool else []
    if not result:
        report.drop("no usable justification in the set")
    return result


def _processed_justifications(
    row: dict, source: str, index: int, justification_set: str, report: JustificationReport
) -> list[SplitJustification]:
    """Rows that carry only the Hub's already processed fields (``preference_statement``,
    ``preference_elaboration``, ``three_most_similar_preferences``)."""
    if justification_set == "overall":
        items = [{"statement": row.get("preference_statement"), "elaboration": row.get("preference_elaboration")}]
    else:
        items = row.get("three_most_similar_preferences") or []
        if isinstance(items, str):
            items = ast.literal_eval(items)
    if not items or items[0].get("statement") is None:
        raise DataError(
            source,
            index,
            "all_preferences_unprocessed",
            "no justification text (and no preference_statement / three_most_similar_preferences)",
        )
    result = []
    for item in items:
        report.justifications_read += 1
        statement = strip_statement_prefix(str(item.get("statement") or "")).strip()
        label = statement_label(statement)
        report.statement_positions["front" if label else "none"] += 1
        strength = item.get("strength", row.get("preference_strength"))
        if label is None:
            report.justifications_dropped[NO_STATEMENT] += 1
        elif isinstance(strength, (int, float)) and strength != NEITHER_VALID and not _agrees(label, int(strength)):
            report.justifications_dropped[CONTRADICTS] += 1
        else:
            result.append(SplitJustification(statement, str(item.get("elaboration") or "").strip(), label, "front"))
    if not result:
        report.drop("no usable justification in the set")
    return result


def load_justification_examples(
    source: str,
    split: str = "train",
    *,
    justification_set: str = "overall",
    target: str = "full",
    flip_augmentation: bool = False,
    seed: int = 0,
    on_error: OnError = "raise",
    limit: int | None = None,
    return_report: bool = False,
):
    """Justifier examples from HelpSteer2-Preference rows: ``prompt`` (chat messages),
    ``response_1``, ``response_2``, ``target`` (the assistant turn), ``label`` (1 or 2) and
    ``flipped``. ``limit`` keeps the first N examples before flip augmentation doubles them.
    """
    import datasets

    if justification_set not in JUSTIFICATION_SETS:
        raise InputError(f"unknown justification_set {justification_set!r}; choose one of {JUSTIFICATION_SETS}")
    if target not in JUSTIFIER_TARGETS:
        raise InputError(f"unknown justifier_target {target!r}; choose one of {JUSTIFIER_TARGETS}")
    src = str(source)
    # The Hub keeps every preference row in one "train" file with a ``split`` column: filter here.
    rows = read_rows(source, split="train", data_dir="preference")
    report = JustificationReport(source=src)
    examples: list[dict] = []
    for index, row in enumerate(rows):
        if limit is not None and len(examples) >= limit:
            break
        if not isinstance(row, dict):
            raise DataError(src, index, None, "expected an object per row")
        if not in_split(row.get("split"), split):
            continue
        report.rows_read += 1
        try:
            prompt = split_helpsteer_turns(require_text(row, "prompt", src, index))
            response_1 = require_text(row, "response_1", src, index)
            response_2 = require_text(row, "response_2", src, index)
            # Seeded per task, so a task's choice does not depend on which other rows were read.
            splits = justifications_of_row(row, src, index, justification_set, random.Random(f"{seed}:{index}"), report)
        except (DataError, ValueError, SyntaxError) as err:
            if on_error == "raise":
                raise err if isinstance(err, DataError) else DataError(src, index, None, str(err)) from None
            report.drop("malformed row")
            continue
        if splits:
            report.rows_kept += 1
        for split_justification_ in splits:
            examples.append(
                {
                    "prompt": prompt,
                    "response_1": response_1,
                    "response_2": response_2,
                    "target": make_target(split_justification_, target),
                    "label": split_justification_.label,
                    "flipped": False,
                }
            )
    if limit is not None:
        examples = examples[:limit]
    report.justifications_kept = len(examples)
    if flip_augmentation:
        examples = add_flipped(examples)
        report.flipped_added = report.justifications_kept
    report.log()
    dataset = (
        datasets.Dataset.from_list(examples)
        if examples
        else datasets.Dataset.from_dict(
            {k: [] for k in ("prompt", "response_1", "response_2", "target", "label", "flipped")}
        )
    )
    return (dataset, report) if return_report else dataset


def add_flipped(examples: list[dict]) -> list[dict]:
    """Each example followed by its flipped copy (the data set doubles)."""
    out = []
    for example in examples:
        out.extend([example, flip_example(example)])
    return out


def label_examples_from_pairs(pairs, seed: int = 0, flip_augmentation: bool = False) -> list[dict]:
    """Label-only justifier examples from plain ``prompt, chosen, rejected`` pairs: the chosen
    response goes to a random (seeded) position and the target names it. With flip augmentation
    every pair appears in both orders instead."""
    rng = random.Random(seed)
    examples = []
    for row in pairs:
        chosen_first = rng.random() < 0.5
        r1, r2 = (row["chosen"], row["rejected"]) if chosen_first else (row["rejected"], row["chosen"])
        label = 1 if chosen_first else 2
        examples.append(
            {
                "prompt": row["prompt"],
                "response_1": r1,
                "response_2": r2,
                "target": label_text(label),
                "label": label,
                "flipped": False,
            }
        )
    return add_flipped(examples) if flip_augmentation else examples
