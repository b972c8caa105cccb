"""One options layer for every verb: dataclasses parsed by transformers' ``HfArgumentParser``.

Every ``hsrm`` verb declares its options as a dataclass (fields with ``help`` metadata; the
training verbs use their ``TrainingArguments`` subclasses) and parses them here, the way TRL's
``trl sft --config`` does:

* ``--config FILE.yaml`` (or a YAML file as the first, positional argument: ``hsrm train
  recipes/x.yaml``) sets values, and the command line overrides them;
* ``--batch-size`` and ``--batch_size`` are the same flag; ``--key=value`` keeps ``value`` verbatim;
* lists and booleans are typed by the field: ``--attributes helpfulness`` is a one-element list,
  ``--seeds 0 1 2`` and the YAML spelling ``--seeds "[0, 1, 2]"`` are the same list; ``--flag`` alone is
  ``true``, ``--no_flag`` turns a default-true flag off;
* an unknown key, in the file or on the command line, is an error that suggests the nearest key;
* a bad value is one line naming the flag (not argparse's exit 2 with a usage block).

What ``HfArgumentParser`` gets wrong for us, and is fixed here: it has no ``--config`` (TRL's
``TrlParser`` adds one, but only as a separate token, without suggestions, and it passes YAML 1.1's
``no`` through as ``False`` to string fields); it cannot type ``dict`` or list-of-mapping fields
(study grids); it allows abbreviated flags (``--model`` would silently mean
``--model_name_or_path``); and its unknown-argument error names no alternative.

:func:`read_yaml_mapping` is hsrm's one YAML loader.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import difflib
import os
import types
import typing
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

import yaml
from transformers import HfArgumentParser

from .data.auto import DataFormat
from .embedding.active import InitialStrategy, Strategy
from .embedding.annotate import Design, Pairing
from .embedding.extract import EmbedFormat
from .embedding.models import FitMethod
from .engine import Layout
from .errors import InputError, MissingFileError


class OptionsError(InputError):
    """A bad option: the CLI prints it as one line and exits 1."""


CHECK_KEYS = ("required", "positive")  # option metadata that Options.__post_init__ checks (not passed to argparse)


def read_yaml_mapping(path: str | os.PathLike, what: str = "a config") -> dict[str, Any]:
    """The top-level mapping of a YAML file, or a one-line error naming the file (and line)."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"{path}: no such file ({what} was expected)")
    with open(path, encoding="utf-8") as handle:
        try:
            loaded = yaml.safe_load(handle) or {}
        except UnicodeDecodeError as err:
            raise OptionsError(f"{path}: not UTF-8 text (byte {err.start} is {err.object[err.start]:#04x})") from None
        except yaml.YAMLError as err:
            where = getattr(err, "problem_mark", None)
            line = f" at line {where.line + 1}" if where is not None else ""
            raise OptionsError(f"{path}: not valid YAML{line} ({getattr(err, 'problem', None) or err})") from None
    if not isinstance(loaded, dict):
        raise OptionsError(f"{path}: {what} must be a YAML mapping of keys")
    return loaded


def _yaml_value(text: str) -> Any:
    """A mapping or list given on the command line in YAML/JSON spelling: ``'{betas: [1, 5]}'``."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise argparse.ArgumentTypeError(f"not a YAML value ({err})") from None


def _strip_optional(tp):
    """``X | None`` → X."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def _is_structured(tp) -> bool:
    """dict fields, bare lists and lists of mappings: one YAML value on the command line."""
    tp = _strip_optional(tp)
    origin = typing.get_origin(tp) or tp
    if origin is dict:
        return True
    if origin is list:
        args = typing.get_args(tp)
        return not args or typing.get_origin(args[0]) is dict or args[0] in (dict, typing.Any)
    return False


def _is_list(tp) -> bool:
    tp = _strip_optional(tp)
    return (typing.get_origin(tp) or tp) is list


def choices_of(tp) -> tuple | None:
    """The allowed values of a ``Literal`` field (or of a list of them), else ``None``."""
    tp = _strip_optional(tp)
    if _is_list(tp) and typing.get_args(tp):
        tp = _strip_optional(typing.get_args(tp)[0])
    return typing.get_args(tp) if typing.get_origin(tp) is Literal else None


def check_choices(options: Any) -> None:
    """Every ``Literal``-typed field of a dataclass holds one of its values: argparse checks the
    command line, this checks what a YAML file or a Python caller gave."""
    hints = typing.get_type_hints(type(options))
    for f in dataclasses.fields(options):
        allowed = choices_of(hints.get(f.name, Any))
        value = getattr(options, f.name)
        if allowed is None or value is None:
            continue
        for item in value if isinstance(value, (list, tuple)) else [value]:
            if item not in allowed:
                flag = "--" + f.name.replace("_", "-")
                raise OptionsError(f"{flag} {item!r}: choose one of {', '.join(map(str, allowed))}")


class DefaultSaidOnceFormatter(argparse.HelpFormatter):
    """argparse's ArgumentDefaultsHelpFormatter appends ``(default: …)`` to every option, also where
    the help already says the default in words or the option is required, and shows ``None`` for
    "not set" ("(required) (default: None)"). This appends the default only where it adds something."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        already_said = "default" in text.lower() or "(required)" in text
        unset = action.default in (None, "", [], argparse.SUPPRESS)
        if already_said or unset or not action.option_strings:
            return text
        return f"{text} (default: %(default)s)"


class OptionsParser(HfArgumentParser):
    """``HfArgumentParser`` with ``--config``, typed YAML values, suggestions and one-line errors."""

    def __init__(self, dataclass_types, *, prog: str, description: str | None = None, positional: str | None = None):
        """``positional``: a leading bare argument is ``--config`` (``"config"``) or fills that field
        (``hsrm select STATE_DIR``)."""
        self.positional = positional
        types = list(dataclass_types) if isinstance(dataclass_types, (list, tuple)) else [dataclass_types]
        self.field_types: dict[str, Any] = {}
        for dtype in types:
            self.field_types.update(typing.get_type_hints(dtype))
        super().__init__(
            types,
            prog=prog,
            description=description,
            allow_abbrev=False,
            formatter_class=DefaultSaidOnceFormatter,
        )
        self.add_argument(
            "--config",
            metavar="FILE.yaml",
            default=None,
            help="read options from a YAML file (a recipe); command-line values override it",
        )

    @staticmethod
    def _parse_dataclass_field(parser: argparse.ArgumentParser, field: dataclasses.Field):
        if any(key in field.metadata for key in CHECK_KEYS):  # hsrm's own checks are not argparse keywords
            field = copy.copy(field)
            field.metadata = types.MappingProxyType({k: v for k, v in field.metadata.items() if k not in CHECK_KEYS})
        if field.name == "output_dir" and "--output" not in field.metadata.get("aliases", []):
            # the Trainer's folder (TrainingArguments, TRL's configs): --output, as in every other verb
            field = copy.copy(field)
            field.metadata = types.MappingProxyType(
                {**field.metadata, "aliases": [*field.metadata.get("aliases", []), "--output"]}
            )
        structured, literal_list = _is_structured(field.type), _is_list(field.type) and choices_of(field.type)
        if structured or literal_list:  # HfArgumentParser types neither (a list of Literal calls Literal("x"))
            kwargs = {k: v for k, v in field.metadata.items() if k != "aliases"}
            default = field.default_factory() if field.default_factory is not dataclasses.MISSING else field.default
            names = [f"--{field.name}"] + ([f"--{field.name.replace('_', '-')}"] if "_" in field.name else [])
            typing_ = {"type": _yaml_value} if structured else {"type": str, "nargs": "+", "choices": literal_list}
            parser.add_argument(*names, *field.metadata.get("aliases", []), default=default, **typing_, **kwargs)
            return
        HfArgumentParser._parse_dataclass_field(parser, field)

    def error(self, message: str):  # argparse would print usage and exit 2
        raise OptionsError(f"{message} (see {self.prog} --help)")

    # -------------------------------------------------------------------------------- parsing
    def _dests(self) -> dict[str, argparse.Action]:
        """Every key a YAML file may use → its action: the field's name and each alias's
        (``output_dir:`` sets ``output`` where ``--output_dir`` is an alias of ``--output``)."""
        dests = {}
        for action in self._actions:
            if action.dest in ("help", "config"):
                continue
            for flag in action.option_strings:
                dests.setdefault(flag.lstrip("-").replace("-", "_"), action)
            dests[action.dest] = action
        return dests

    def _flags(self) -> list[str]:
        return [s for action in self._actions for s in action.option_strings if s.startswith("--")]

    def _suggest(self, key: str, choices: Iterable[str]) -> str:
        match = difflib.get_close_matches(key, list(choices), 1)
        return f" (did you mean {match[0]}?)" if match else ""

    def _coerce(self, key: str, value: Any) -> Any:
        """A value from YAML or a dict as the field wants it (YAML 1.1 reads ``no`` as False, ``2024`` as int)."""
        tp = _strip_optional(self.field_types.get(key, Any))
        if isinstance(value, bool) and tp is not bool and not _is_structured(tp):
            return "yes" if value else "no"  # `save_strategy: no`
        if tp is str and isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        if _is_list(tp) and not _is_structured(tp) and value is not None and not isinstance(value, (list, tuple)):
            return [value]  # `attributes: helpfulness` is a list of one
        if tp in (int, float, str, bool) and isinstance(value, (list, tuple, dict)):
            # argparse converts only what the command line gives; a YAML value reaches the field as it is
            raise OptionsError(f"{key}: expected one {tp.__name__}, got a {type(value).__name__} ({value!r})")
        return value

    def set_values(self, values: dict[str, Any], source: str) -> None:
        """Use ``values`` (a YAML file's or a dict's) as the defaults the command line overrides."""
        dests = self._dests()
        normalized = {str(k).replace("-", "_"): v for k, v in values.items()}
        unknown = sorted(set(normalized) - set(dests))
        if unknown:
            hints = [f"{k}{self._suggest(k, dests)}" for k in unknown]
            raise OptionsError(f"{source}: unknown keys: {', '.join(hints)}")
        coerced = {dests[k].dest: self._coerce(dests[k].dest, v) for k, v in normalized.items()}
        self.set_defaults(**coerced)
        for key in coerced:
            dests[key].required = False

    def _expand_lists(self, argv: list[str]) -> list[str]:
        """``--seeds "[0, 1]"`` / ``--seeds=[0, 1]`` → ``--seeds 0 1`` for list fields (nargs="+")."""
        list_flags = {s for a in self._actions if a.nargs == "+" for s in a.option_strings}
        out: list[str] = []
        for i, token in enumerate(argv):
            flag, eq, inline = token.partition("=")
            if eq and flag in list_flags and inline.strip().startswith("["):
                out += [flag, *(str(v) for v in _yaml_value(inline))]
            elif out and out[-1] in list_flags and token.strip().startswith("[") and token.strip().endswith("]"):
                out += [str(v) for v in _yaml_value(token)]
            else:
                out.append(token)
        return out

    def parse(self, argv: Sequence[str] | None = None, defaults: dict[str, Any] | None = None) -> tuple:
        """Dataclass instances from ``--config`` (or the positional file), ``defaults`` and ``argv``."""
        argv = list(argv or [])
        if argv and not argv[0].startswith("-") and self.positional:
            first = argv.pop(0)
            argv = ([f"--config={first}"] if self.positional == "config" else [f"--{self.positional}={first}"]) + argv
        config_path = None
        rest: list[str] = []
        i = 0
        while i < len(argv):
            token = argv[i]
            if token == "--config":
                if i + 1 >= len(argv):
                    raise OptionsError("--config needs a YAML file")
                config_path, i = argv[i + 1], i + 2
                continue
            if token.startswith("--config="):
                config_path = token.split("=", 1)[1]
            else:
                rest.append(token)
            i += 1
        if config_path:
            self.set_values(read_yaml_mapping(config_path), str(config_path))
        if defaults:
            self.set_values(defaults, "options")
        rest = self._expand_lists(rest)
        _, remaining = self.parse_known_args(args=rest)  # unknown flags first: before any field's own checks run
        if remaining:
            flag = next((t for t in remaining if t.startswith("-")), remaining[0])
            key = flag.split("=", 1)[0]
            raise OptionsError(
                f"unknown option {key}{self._suggest(key, self._flags()) if key.startswith('--') else ''}"
                f" (see {self.prog} --help)"
            )
        outputs = self.parse_args_into_dataclasses(args=rest)
        return tuple(o for o in outputs if dataclasses.is_dataclass(o))  # not the Namespace holding --config


def parse_options(
    dataclass_types,
    argv: Sequence[str] | None,
    *,
    prog: str,
    description: str | None = None,
    positional: str | None = None,
    defaults: dict[str, Any] | None = None,
):
    """Parse ``argv`` into one instance of each dataclass type (a single instance for one type)."""
    parser = OptionsParser(dataclass_types, prog=prog, description=description, positional=positional)
    outputs = parser.parse(argv, defaults=defaults)
    return outputs[0] if len(outputs) == 1 else outputs


def options_from(dataclass_type, values: dict[str, Any] | None = None, path: str | os.PathLike | None = None):
    """An options dataclass from a YAML file and/or a dict, typed and checked exactly as the command line is."""
    argv = [f"--config={path}"] if path is not None else []
    return parse_options(dataclass_type, argv, prog=getattr(dataclass_type, "__name__", "options"), defaults=values)


def option(
    default: Any = dataclasses.MISSING,
    help: str = "",
    *,
    aliases: Sequence[str] = (),
    factory=None,  # noqa: A002
    required: bool = False,
    positive: bool = False,
    **metadata,
):
    """A dataclass field with its ``--help`` text, extra flag spellings, and the checks
    :class:`Options` runs: ``required`` (must be given, on the command line or in ``--config``) and
    ``positive`` (a whole number ≥ 1 when given)."""
    meta = {"help": help + (" (required)" if required else ""), **metadata}
    if required:
        meta["required"] = True
    if positive:
        meta["positive"] = True
    if aliases:
        meta["aliases"] = list(aliases)
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


@dataclasses.dataclass
class Options:
    """Base of every verb's options: runs the ``required`` / ``positive`` checks of :func:`option`
    and the ``Literal`` choices (:func:`check_choices`)."""

    def __post_init__(self):
        check_choices(self)
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            flag = "--" + f.name.replace("_", "-")
            if f.metadata.get("required") and value in (None, ""):
                raise OptionsError(f"{flag} is required")
            if (
                f.metadata.get("positive")
                and value is not None
                and (isinstance(value, bool) or not isinstance(value, int) or value < 1)
            ):
                raise OptionsError(f"{flag} must be a positive whole number, got {value!r}")


@dataclasses.dataclass
class ResultFormat:
    """The output convention of every verb: a human summary on stdout (logs go to stderr)."""

    json: bool = option(False, "print the result document as JSON on stdout instead of the human summary")


def print_result(result: Any, summary: str, as_json: bool) -> None:
    """The output convention: a human summary on stdout, or with ``--json`` the result document."""
    import json

    import numpy as np

    def plain(value):
        if isinstance(value, (np.floating, np.integer)):
            return value.item()
        if isinstance(value, np.ndarray):
            return value.tolist()
        return str(value)

    print(json.dumps(result, indent=2, default=plain) if as_json else summary)


# ================================================================================ shared options
# One vocabulary across verbs: --model (the model the verb acts on; other roles have their own names:
# --backbone, --golden-model, --weak/--strong), --data, --output, --batch-size, --max-length, --dtype,
# --device, --on-bad-rows, --overwrite, --json. Each is declared once, here, and mixed into the verbs.
OnBadRows = Literal["raise", "skip"]
Dtype = Literal["float32", "bfloat16", "float16"]


@dataclasses.dataclass
class ModelInput:
    model: str | None = option(
        None, "the reward model folder (any trained AutoModelForSequenceClassification) or Hub id", required=True
    )


@dataclasses.dataclass
class DataInput:
    data: str | None = option(None, "data file (.jsonl/.jsonl.gz/.json/.parquet) or Hub id", required=True)
    data_format: DataFormat = option("auto", "the data's format (auto: told from its first row or its Hub id)")
    split: str | None = option(None, "split of a Hub dataset or of a file's split column (default per format)")
    limit: int | None = option(None, "use the first N rows only", positive=True)
    on_bad_rows: OnBadRows = option("raise", "unusable rows: raise (stop at the first) or skip (skip and count them)")


@dataclasses.dataclass
class EngineInput:
    """The scoring engine's options (hsrm.engine), shared by every verb that scores."""

    batch_size: int = option(8, "sequences per forward pass (padded layout)", positive=True)
    max_length: int | None = option(
        None,
        "tokens kept per sequence, cut from the left (default: the benchmark's protocol, "
        "else the model's training max_length, else 2048)",
        positive=True,
    )
    dtype: Dtype | None = option(None, "the weights' precision (default float32)")
    device: str | None = option(None, "cpu, cuda, cuda:1 … (default: this process's GPU when present)")
    layout: Layout = option(
        "auto",
        "padded (length-sorted batches), packed (token-budget rows), or auto: packed on CUDA "
        "with varlen attention, else padded",
    )
    max_tokens: int = option(16384, "tokens per packed row", positive=True)
    reward_output: str | None = option(
        None,
        "which output of the model's head is the reward, by index or label name (default: what the model record "
        "says; required for a head with several outputs and no hsrm record, such as a 2-label classifier)",
    )
    share_prompts: bool = option(
        True,
        "compute a prompt (any common token-id prefix) once for all its responses; the engine scores "
        "unshared where that is not exact for the model (docs/speed.md)",
    )

    def engine_settings(self) -> dict[str, Any]:
        """The engine's options as :class:`hsrm.scoring.RewardScorer`'s keywords: declared once, in
        this class, and handed on as one object."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(EngineInput)}


@dataclasses.dataclass
class Output:
    output: str | None = option(None, "where to write the result")
    overwrite: bool = option(False, "replace --output if it exists (never one of the inputs, nor a folder holding one)")


# the one spelling of "replace what --output holds" in every verb (also a Trainer's, whose field keeps the old name)
OVERWRITE_ALIASES = ("--overwrite_output_dir", "--overwrite-output-dir")


# ====================================================================================== verbs
@dataclasses.dataclass
class ScoreOptions(ResultFormat, Output, EngineInput, ModelInput, Options):
    """hsrm score: reward every response and pick the Best-of-N per prompt."""

    data: str | None = option(
        None, "JSONL/JSON/Parquet rows {prompt, responses: [...]} or {prompt, response}", required=True
    )
    output: str | None = option(None, "the scored JSONL (default: <data name>.scored.jsonl here)")


@dataclasses.dataclass
class EvaluateOptions(ResultFormat, Output, EngineInput, DataInput, ModelInput, Options):
    """hsrm evaluate: RewardBench sections, pairwise accuracy or rating errors; --justifier for a generative judge."""

    output: str | None = option(None, "JSON result path (default: <model>/evaluation/<data name>.json)")
    per_subset: int | None = option(
        None, "RewardBench: the first N rows of every subset (quick, every section still scores)", positive=True
    )
    dtype: Literal["float32", "bfloat16", "float16", "auto"] | None = option(
        None, "the weights' precision (default float32; a justifier: auto, the precision it was saved in)"
    )
    justifier: bool = option(
        False,
        "the model is a generative pairwise justifier (a causal LM): judge every pair in both "
        "orders and report accuracy, position bias and parse failures",
    )
    max_new_tokens: int | None = option(
        None, "justifier: tokens generated per judgement (default: its training setting, else 512)", positive=True
    )


@dataclasses.dataclass
class ExpoOptions(ResultFormat, Output, EngineInput, DataInput, Options):
    """hsrm expo: θ = θ_weak + α(θ_strong − θ_weak) for reward models, with a searched α."""

    weak: str | None = option(None, "the weaker checkpoint (paper: helpfulness-only regression RM)", required=True)
    strong: str | None = option(None, "the stronger checkpoint trained from it (paper: Scaled BT)", required=True)
    output: str | None = option(None, "folder for the extrapolated model", required=True)
    alpha: float | None = option(None, "the extrapolation factor (or --search)")
    search: bool = option(False, "search α on --data: coarse 1.1…2.0 by 0.1, then ±0.09 by 0.01 around the best")
    data: str | None = option(
        None, "validation set for --search (RewardBench format → overall score; pairs → accuracy)"
    )
    coarse: str = option("1.1,2.0,0.1", "coarse grid START,STOP,STEP")
    fine_step: float = option(0.01, "fine grid step")
    fine_radius: float = option(0.09, "fine grid radius around the coarse best (0: no fine stage)")

    def __post_init__(self):
        super().__post_init__()
        if (self.alpha is None) == (not self.search):
            raise OptionsError("give exactly one of --alpha A and --search")
        if self.search and not self.data:
            raise OptionsError("--search needs --data: a validation set to score each factor on")
        parts = self.coarse.split(",")
        if len(parts) != 3:
            raise OptionsError(f"--coarse {self.coarse!r}: expected START,STOP,STEP such as 1.1,2.0,0.1")
        try:
            self.coarse_grid = tuple(float(x) for x in parts)
        except ValueError:
            raise OptionsError(f"--coarse {self.coarse!r}: START,STOP,STEP must be numbers") from None


@dataclasses.dataclass
class PushOptions(ResultFormat, Output, ModelInput, Options):
    """hsrm push: write a model card and upload a reward model to the Hub."""

    model: str | None = option(None, "the local reward model folder", required=True)
    repo_id: str | None = option(None, "user-or-org/name on the Hub", required=True)
    output: str | None = option(
        None,
        "the upload folder to prepare (default with --dry-run: <model>.hub beside the "
        "model; without: a temporary folder, removed after the upload)",
    )
    private: bool = option(False, "create the repository as private")
    dry_run: bool = option(False, "prepare the upload folder and card only; upload nothing")
    evaluations: list[str] = option(
        help="`hsrm evaluate` result files to add to the card (besides <model>/evaluation/*.json)", factory=list
    )
    token: str | None = option(
        None, "Hub token (prefer HF_TOKEN or `huggingface-cli login`: a flag ends up in shell history)"
    )
    commit_message: str = option("Upload reward model with hsrm", "the Hub commit message")


@dataclasses.dataclass
class EmbedOptions(ResultFormat, Output, DataInput, Options):
    """hsrm embed: embed (prompt, response) rows with a frozen backbone, optionally with golden rewards."""

    data: str | None = option(None, "pairs (chosen/rejected, HH transcripts) or prompt+response rows", required=True)
    data_format: EmbedFormat = option(
        "auto",
        "responses (prompt + response rows) or a pairwise format; auto: told from the first row",
    )
    split: str | None = option(
        None, "the split to embed (a Hub dataset's, or a file's split column); default: all rows"
    )
    output: str | None = option(None, "the .npz to write (embeddings, prompt_ids, golden, pairs, meta)", required=True)
    model: str | None = option(
        None,
        "the frozen backbone folder or Hub id (default: the embedded SmolLM2-135M-Instruct)",
        aliases=["--backbone"],
    )
    layer: int = option(-1, "hidden-state index: -1 = last (normalised), 0 = token embeddings")
    max_length: int | None = option(
        None, "tokens kept, cut from the left (default: the backbone's recorded max_length, else 2048)", positive=True
    )
    batch_size: int = option(16, "sequences per forward pass (padded layout)", positive=True)
    layout: Layout = option(
        "auto",
        "the engine's batches: padded (length-sorted), packed (token-budget rows), or auto: packed on CUDA "
        "with varlen attention, else padded",
    )
    max_tokens: int = option(16384, "tokens per packed row", positive=True)
    share_prompts: bool = option(
        True,
        "compute a prompt (any common token-id prefix) once for all its responses, as hsrm score does "
        "(the same embeddings within float rounding; docs/speed.md)",
    )
    cache: str = option("~/.cache/hsrm/embeddings", "embedding cache folder; 'none' disables it")
    device: str | None = option(None, "cuda / cpu (default: cuda when available)")
    dtype: Dtype | None = option(None, "the backbone's precision (default: bfloat16 on GPU, float32 on CPU)")
    golden_column: str | None = option(None, "numeric column holding each response's golden reward")
    golden_model: str | None = option(None, "a trained reward-model folder whose rewards are the golden reward")
    golden_max_length: int | None = option(
        None, "max length for the golden model (default: the length it was trained with, else 2048)", positive=True
    )

    def __post_init__(self):
        super().__post_init__()
        if self.golden_column and self.golden_model:
            raise OptionsError("give at most one of --golden-column and --golden-model")


@dataclasses.dataclass
class FitOptions(ResultFormat, Output, Options):
    """hsrm fit: fit (or apply) a reward model on embeddings."""

    embeddings: str | None = option(None, "the training .npz from `hsrm embed` (or a study pool)")
    method: FitMethod | None = option(None, "the reward model to fit")
    ensemble: list[FitMethod] | None = option(None, "methods averaged as one model, e.g. bt-mlp clf-lgb")
    ensemble_seeds: list[int] = option(help="seeds per ensemble method", factory=lambda: [0])
    output: str | None = option(None, "folder to save the fitted model in")
    apply: str | None = option(
        None,
        "a fitted embedding-model folder (written by `hsrm fit`, not a reward model): score --eval-data with it "
        "instead of fitting one (--model, its spelling before, still works)",
        aliases=["--model"],
    )
    beta: float | None = option(
        None, "simulate annotators σ(β|Δr|) from the golden reward instead of using the file's pairs"
    )
    design: Design = option("random", "which pairs the annotators see (with --beta)")
    pairing: Pairing = option("in-prompt", "pairs of one prompt's responses, or of two prompts' (with --beta)")
    n_annotations: int | None = option(None, "pairs to annotate (with --beta; default one per prompt)", positive=True)
    seed: int = option(0, "seed of the annotators and the model")
    max_epochs: int = option(30, "MLP epochs at most", positive=True)
    patience: int = option(3, "MLP epochs without validation improvement before stopping", positive=True)
    lr: float = option(1e-3, "MLP learning rate (Adam)")
    batch_size: int | None = option(None, "MLP batch size (default 256)", positive=True)
    hidden: list[int] = option(help="MLP hidden sizes", factory=lambda: [1024, 512])
    eval_data: str | None = option(
        None, ".npz to evaluate on (BoN gain + Spearman with golden rewards, accuracy with pairs)"
    )
    scores_output: str | None = option(None, "write the --eval-data scores here (.npy)")


@dataclasses.dataclass
class SelectOptions(ResultFormat, Options):
    """hsrm select STATE_DIR: ingest the pending batch's labels, retrain, write the next batch."""

    state_dir: str | None = option(
        None,
        "folder holding state.json, batch files, labels and the model (the first positional argument)",
        required=True,
        aliases=["--output"],
    )
    embeddings: str | None = option(None, "first call: .npy (n, dim) or .npz with `embeddings` (+ `prompt_ids`)")
    pairs: str | None = option(
        None,
        "first call: candidate pairs, .jsonl rows {first, second, …} or an (N, 2) .npy; "
        "default: all in-prompt pairs of the .npz's prompt_ids",
    )
    strategy: Strategy | None = option(None, "selection strategy (default dopt; may change between calls)")
    batch_size: int | None = option(None, "pairs per batch (default 100; may change between calls)", positive=True)
    initial_strategy: InitialStrategy | None = option(
        None, "the first batch, chosen before any model exists (default random)"
    )
    candidates: int | None = option(
        None, "random subset of the unlabelled pool scored per round (default 20000)", positive=True
    )
    hidden: list[int] | None = option(None, "BT-MLP hidden sizes (default 64 64 64)")
    max_epochs: int | None = option(None, "BT-MLP epochs at most (default 30)", positive=True)
    seed: int | None = option(None, "seed of the selection and the model (default 0)")
    partial: bool = option(
        False, "ingest the labelled rows of a partly labelled batch; its unlabelled rows go back to the pool"
    )


@dataclasses.dataclass
class DemoOptions(ResultFormat, Options):
    """hsrm demo: the first hour in one command (regression → BT → ExPO, RewardBench, Best-of-N, a study)."""

    output: str = option("demo_report", "the report folder")
    overwrite: bool = option(False, "replace --output if it exists (a previous report)")
    quick: bool = option(False, "a tiny random model, about a minute; for smoke tests")
    data_dir: str | None = option(
        None,
        "a folder laid out like ../shared/data (hh_rlhf/, helpsteer1/, rewardbench_sample/); "
        "default: ../shared/data beside a checkout, then the Hugging Face Hub, then a "
        "generated toy set",
    )


def dump_options(options: Any) -> dict[str, Any]:
    """The init fields of an options dataclass as plain YAML-able values (what ``--config`` reads back):
    enums become their value, nested dataclasses mappings."""
    import enum

    def plain(value):
        if isinstance(value, enum.Enum):
            return value.value
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            return {k: plain(v) for k, v in dataclasses.asdict(value).items()}
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value

    return {f.name: plain(getattr(options, f.name)) for f in dataclasses.fields(options) if f.init}
