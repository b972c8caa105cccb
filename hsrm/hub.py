"""Publish a reward model: a model card, then an upload with huggingface_hub.

    hsrm push --model runs/scaled-bt-expo --repo-id you/scaled-bt-expo --private
    hsrm push --model runs/scaled-bt-expo --repo-id you/scaled-bt-expo --dry-run   # prepare <model>.hub only

The folder that is uploaded (``--output``; with ``--dry-run`` by default ``<model>.hub`` beside the model) holds the
safetensors weights, config, tokenizer files, the evaluation results hsrm wrote
(``evaluation/*.json``, ``expo_search.*``) and a README.md model card with: base model, training
objective, data, the evaluation table, the ExPO factor, the reward statistics, and a usage
snippet that needs plain transformers only. Pickle files and training checkpoints are left out.

The token comes from ``--token``, else ``HF_TOKEN``, else the stored ``huggingface-cli login``.
It is never printed, logged, written to the card or kept in an error message: anything that
huggingface_hub raises is re-raised with the token masked.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .errors import InputError, MissingFileError, UserError

logger = logging.getLogger(__name__)

KEEP_SUFFIXES = (".safetensors", ".json", ".jinja", ".txt", ".model", ".csv", ".tiktoken")
SKIP_NAMES = {"README.md", "training_args.bin", "trainer_state.json", "optimizer.pt", "scheduler.pt", "rng_state.pth"}
OBJECTIVE_TEXT = {
    "regression": "SteerLM Regression: MSE between the head's outputs and Likert ratings (0–4) "
    "(HelpSteer2-Preference §3.2)",
    "bt": "Regular Bradley-Terry: −log σ(r(x, y_c) − r(x, y_r)) (eq. 1)",
    "margin_bt": "Margin Bradley-Terry: −log σ(r(x, y_c) − r(x, y_r) − m) (eq. 2)",
    "scaled_bt": "Scaled Bradley-Terry: −m · log σ(r(x, y_c) − r(x, y_r)) (eq. 3)",
}


# ------------------------------------------------------------------------------ secrets
class HubUploadError(UserError, ConnectionError):
    """An upload failed; the message never contains the token. The CLI reports it in one line; an
    ``OSError`` still, for callers that catch I/O failures."""


def resolve_token(explicit: str | None = None) -> str | None:
    """``--token``, else HF_TOKEN / the stored login (huggingface_hub's own lookup), else None."""
    if explicit:
        return explicit
    try:
        from huggingface_hub import get_token

        return get_token()
    except Exception:  # an unreadable token file is the same as no token here
        return os.environ.get("HF_TOKEN")


def redact(text: str, secrets: Iterable[str | None]) -> str:
    """``text`` with every occurrence of each secret replaced by ``***``."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


# ------------------------------------------------------------------------------ model card
def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def collect_evaluations(model_dir: Path, extra: Iterable[str | os.PathLike] = ()) -> list[dict]:
    """Results written by ``hsrm evaluate`` into ``<model>/evaluation/``, plus any extra files."""
    paths = sorted((model_dir / "evaluation").glob("*.json")) if (model_dir / "evaluation").is_dir() else []
    paths += [Path(p) for p in extra]
    results = []
    for path in paths:
        data = _read_json(path)
        if isinstance(data, dict) and "metrics" in data and "format" in data:
            data = dict(data)
            data["_file"] = path.name
            results.append(data)
        else:
            logger.warning("%s is not an hsrm evaluate result; left out of the card", path)
    return results


def _pct(x: Any) -> str:
    return "—" if not isinstance(x, (int, float)) else f"{100 * x:.1f}"


def evaluation_markdown(results: list[dict]) -> str:
    if not results:
        return "No evaluation was recorded. Run `hsrm evaluate --model DIR --data FILE` before pushing to add one.\n"
    parts = []
    for result in results:
        name = Path(str(result.get("data", result["_file"]))).name
        metrics = result["metrics"]
        parts.append(
            f"**{name}** ({result['format']}, {result.get('n', '?')} items, max length "
            f"{result.get('max_length', '?')})\n"
        )
        if result["format"] == "rewardbench" and "rewardbench" in result:
            bench = result["rewardbench"]
            parts.append("| section | subsets present | score (%) |\n| --- | --- | --- |")
            for section, entry in bench["sections"].items():
                parts.append(
                    f"| {section} | {entry['subsets_present']} of {entry['subsets_official']} | "
                    f"{_pct(entry['score'])} |"
                )
            parts.append(
                f"| **overall** (mean of {len(bench['sections'])} sections) | | **{_pct(bench['overall'])}** |"
            )
            if bench.get("sections_missing"):
                parts.append(
                    f"\nNo data for {', '.join(bench['sections_missing'])}: the overall score is not the leaderboard's."
                )
        elif result["format"] == "rewardbench2" and "rewardbench2" in result:
            bench = result["rewardbench2"]
            parts.append("| subset | rows | score (%) |\n| --- | --- | --- |")
            parts += [
                f"| {subset} | {entry['n']} | {_pct(entry['score'])} |" for subset, entry in bench["subsets"].items()
            ]
            parts.append(f"| **overall** (mean of the subsets) | | **{_pct(bench['overall'])}** |")
            if bench.get("subsets_missing"):
                parts.append(
                    f"\nNo data for {', '.join(bench['subsets_missing'])}: the overall score is not the leaderboard's."
                )
        elif result["format"] == "rmbench" and "rmbench" in result:
            bench = result["rmbench"]
            parts.append(
                "| domain | rows | hard (%) | normal (%) | easy (%) | average (%) |\n| --- | --- | --- | --- | --- | "
                "--- |"
            )
            for domain, entry in [*bench["domains"].items(), ("**overall**", {"n": "", **bench["overall"]})]:
                parts.append(
                    f"| {domain} | {entry['n']} | {_pct(entry['hard'])} | {_pct(entry['normal'])} | "
                    f"{_pct(entry['easy'])} | {_pct(entry['average'])} |"
                )
        elif result["format"] == "helpsteer3" and "helpsteer3" in result:
            parts.append("| domain | pairs | accuracy (%) |\n| --- | --- | --- |")
            parts += [f"| {d} | {e['n']} | {_pct(e['accuracy'])} |" for d, e in result["helpsteer3"]["domain"].items()]
        elif result["format"] == "ratings":
            parts.append("| attribute | MAE | RMSE | Pearson r |\n| --- | --- | --- | --- |")
            for key in [k for k in metrics if k.endswith("_mae")]:
                attr = key[: -len("_mae")]
                pearson = metrics.get(f"{attr}_pearson")
                parts.append(
                    f"| {attr} | {metrics[key]:.3f} | {metrics[f'{attr}_rmse']:.3f} | "
                    f"{'—' if pearson is None else f'{pearson:.3f}'} |"
                )
        if "accuracy" in metrics:
            parts.append(
                f"\nPairwise accuracy {_pct(metrics['accuracy'])} % (ties counted wrong: {metrics.get('ties', 0)}), "
                f"mean margin {metrics['margin']:.4f}."
            )
        parts.append("")
    return "\n".join(parts) + "\n"


def _is_hub_id(text: Any) -> bool:
    return (
        isinstance(text, str)
        and text.count("/") == 1
        and not text.startswith((".", "/", "~"))
        and not os.path.exists(text)
    )


def usage_snippet(repo_id: str, attribute_weights: list[float] | None, max_length: int) -> str:
    """Plain-transformers code that reproduces hsrm's reward for one conversation."""
    if attribute_weights:
        reward_line = (
            f"weights = torch.tensor({list(attribute_weights)})\n"
            "    reward = (model(input_ids=ids).logits[0] @ weights).item()  # weighted attributes"
        )
    else:
        reward_line = "reward = model(input_ids=ids).logits[0, 0].item()"
    return f"""```python
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

repo = "{repo_id}"
tokenizer = AutoTokenizer.from_pretrained(repo)
model = AutoModelForSequenceClassification.from_pretrained(repo, dtype=torch.float32).eval()

messages = [
    {{"role": "user", "content": "What is the capital of France?"}},
    {{"role": "assistant", "content": "The capital of France is Paris."}},
]
text = tokenizer.apply_chat_template(messages, tokenize=False)
# The chat template already holds the special tokens; keep the *end* when too long (left truncation).
ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"][:, -{max_length}:]
with torch.no_grad():
    {reward_line}
print(reward)
```
"""


def build_model_card(model_dir: str | os.PathLike, repo_id: str, evaluations: list[dict] | None = None) -> str:
    """README.md text for the model folder (YAML front matter + sections)."""
    from .modeling import DEFAULT_MAX_LENGTH
    from .record import read_record

    root = Path(model_dir)
    record = read_record(root)
    evaluations = collect_evaluations(root) if evaluations is None else evaluations
    base_model, expo, objective = record.base_model, record.expo, record.objective
    front = [
        "---",
        "library_name: transformers",
        "pipeline_tag: text-classification",
        "tags:",
        "- reward-model",
        "- hsrm",
    ]
    if objective:
        front.append(f"- {objective.replace('_', '-')}")
    if expo:
        front.append("- expo")
    if _is_hub_id(base_model):
        front.append(f"base_model: {base_model}")
    if _is_hub_id(record.train_data):
        front += ["datasets:", f"- {record.train_data}"]
    front.append("---")
    lines = [
        "\n".join(front),
        "",
        f"# {repo_id.split('/')[-1]}",
        "",
        "A reward model trained with hsrm: a sequence classifier whose score head is read at the last "
        "token of the conversation, rendered with this repository's chat template.",
        "",
        "## Training",
        "",
    ]
    rows = [
        ("base model", base_model or "unknown"),
        ("objective", OBJECTIVE_TEXT.get(objective, objective or "unknown (not trained by hsrm)")),
        ("initialised from", record.init_from),
        ("training data", record.train_data),
        ("outputs", ", ".join(record.attributes or []) or None),
        ("attribute weights", record.attribute_weights),
        ("max length (tokens, left-truncated)", record.max_length),
        ("LoRA (merged)", record.lora or None),
    ]
    lines += ["| | |", "| --- | --- |"] + [f"| {k} | {v} |" for k, v in rows if v not in (None, "", [])]
    lines += ["", "## ExPO", ""]
    if expo:
        lines.append(
            f"Weights extrapolated as θ = θ_weak + α(θ_strong − θ_weak) with **α = {expo.get('alpha')}** "
            f"(Zheng et al., 2024; HelpSteer2-Preference §4). Weak: `{expo.get('weak')}`, strong: "
            f"`{expo.get('strong')}`."
        )
        if expo.get("searched_on"):
            lines.append(
                f"The factor was searched on `{expo['searched_on']}` ({expo.get('metric')}: "
                f"{expo.get('score', float('nan')):.4f} against {expo.get('strong_score', float('nan')):.4f} "
                f"for the strong model); the full table is in `expo_search.csv`."
            )
    else:
        lines.append("No extrapolation (α = 1: the trained weights as they are).")
    lines += ["", "## Evaluation", "", evaluation_markdown(evaluations)]
    lines += ["## Reward scale", ""]
    if record.reward_mean is not None and record.reward_std is not None:
        lines.append(
            f"Scalar rewards on {record.reward_stats_on or 'held-out data'}: mean {record.reward_mean:.4f}, "
            f"std {record.reward_std:.4f}. Bradley-Terry rewards are not calibrated: compare rewards of "
            "responses to the same prompt, or normalise with these numbers."
        )
    else:
        lines.append("No reward statistics were recorded.")
    lines += [
        "",
        "## Usage",
        "",
        "Plain transformers, no hsrm needed (the reward is read at the last token):",
        "",
        usage_snippet(repo_id, record.attribute_weights, record.max_length or DEFAULT_MAX_LENGTH),
        "With hsrm (batched, length-sorted, also a TRL `reward_funcs` entry):",
        "",
        f'```python\nfrom hsrm.scoring import RewardScorer\n\nscorer = RewardScorer("{repo_id}")\n'
        'scorer.score(["What is the capital of France?"], ["Paris."])\n```',
        "",
    ]
    return "\n".join(lines)


# ------------------------------------------------------------------------------ folder + upload
def _files_to_upload(model_dir: Path) -> list[Path]:
    picked = []
    for path in sorted(model_dir.iterdir()):
        if (
            path.is_file()
            and not path.name.startswith(".")
            and path.suffix in KEEP_SUFFIXES
            and path.name not in SKIP_NAMES
        ):
            picked.append(path)
    if (model_dir / "evaluation").is_dir():
        picked += sorted(p for p in (model_dir / "evaluation").glob("*.json") if p.is_file())
    return picked


def prepare_upload_folder(
    model_dir: str | os.PathLike,
    repo_id: str,
    stage: str | os.PathLike | None = None,
    eval_files: Iterable[str | os.PathLike] = (),
    overwrite: bool = False,
) -> Path:
    """Copy (hard-link where possible) the publishable files and write README.md into ``stage``
    (default ``<model>.hub``). The folder is assembled in a new staging folder and renamed into
    place; an existing ``stage`` is replaced only with ``overwrite``, and never when it is, holds or
    sits inside the model or an evaluation file."""
    from types import SimpleNamespace

    from .files import check_output, staged_folder
    from .modeling import check_model_folder, check_reward_architecture

    root = Path(model_dir)
    check_model_folder(str(root))
    if not root.is_dir():
        raise MissingFileError(f"{root} is not a local model folder")
    config = _read_json(root / "config.json") or {}
    # the card calls it a reward model and tags it text-classification: refuse what is none
    check_reward_architecture(str(root), SimpleNamespace(**config))
    if config.get("pad_token_id") is not None and config.get("pad_token_id") == config.get("eos_token_id"):
        # transformers' own pooling finds "the last non-pad token"; with pad == eos it can skip the
        # real end of the conversation (trl#2758), so the card's snippet could disagree with hsrm.
        logger.warning(
            "%s: pad_token_id equals eos_token_id; plain transformers may read the reward at the wrong "
            "token. Models saved by `hsrm train` have a distinct pad token.",
            root,
        )
    stage_dir = Path(stage) if stage else root.parent / f"{root.name}.hub"
    eval_files = list(eval_files)
    check_output(stage_dir, inputs=[root, *eval_files], overwrite=overwrite)
    # skip_linked: the hard-linked weights are the model's own files, their modes left as they are
    with staged_folder(stage_dir, skip_linked=True) as staging:
        _fill_upload_folder(root, repo_id, staging, eval_files)
    return stage_dir


def _fill_upload_folder(root: Path, repo_id: str, stage_dir: Path, eval_files: list) -> None:
    import stat

    from .files import current_umask

    readable = 0o666 & ~current_umask()  # a hard link shares its source's mode: link only sources that have it
    for path in _files_to_upload(root):
        destination = stage_dir / path.relative_to(root)
        destination.parent.mkdir(parents=True, exist_ok=True)
        try:
            if stat.S_IMODE(path.stat().st_mode) != readable:
                raise OSError("a link would keep the source's mode")  # e.g. safetensors' 0600: copy instead
            os.link(path, destination)  # weights can be large: share the bytes instead of copying
        except OSError:
            shutil.copyfile(path, destination)  # honour_umask gives it the umask's mode afterwards
    extra = []
    for file in eval_files:
        destination = stage_dir / "evaluation" / Path(file).name
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(file, destination)
        extra.append(destination)
    evaluations = collect_evaluations(root, [p for p in extra])
    (stage_dir / "README.md").write_text(build_model_card(root, repo_id, evaluations), encoding="utf-8")


def push(
    model_dir: str,
    repo_id: str,
    *,
    private: bool = False,
    token: str | None = None,
    stage: str | None = None,
    dry_run: bool = False,
    commit_message: str = "Upload reward model with hsrm",
    eval_files: Iterable[str] = (),
    overwrite: bool = False,
) -> dict:
    """Prepare the folder and (unless ``dry_run``) create the repo and upload it. Returns a summary
    that never holds the token. A real upload without ``stage`` prepares the folder in a temporary
    place, removed afterwards; a dry run keeps it (default ``<model>.hub``) for you to read."""
    import tempfile

    if "/" not in repo_id or repo_id.count("/") != 1:
        raise InputError(f"--repo-id {repo_id!r} must look like 'user-or-org/name'")
    if stage is None and not dry_run:
        with tempfile.TemporaryDirectory(prefix="hsrm-push-") as scratch:
            return push(
                model_dir,
                repo_id,
                private=private,
                token=token,
                stage=str(Path(scratch) / "upload"),
                commit_message=commit_message,
                eval_files=eval_files,
            ) | {"stage": None}
    folder = prepare_upload_folder(model_dir, repo_id, stage, eval_files, overwrite=overwrite)
    summary = {
        "stage": str(folder),
        "repo_id": repo_id,
        "private": private,
        "uploaded": False,
        "files": sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()),
    }
    if dry_run:
        return summary
    from huggingface_hub import HfApi

    secret = resolve_token(token)
    if secret is None:
        raise InputError("no Hugging Face token: set HF_TOKEN, run `huggingface-cli login`, or pass --token")
    try:
        api = HfApi(token=secret)
        repo_url = api.create_repo(repo_id=repo_id, private=private, repo_type="model", exist_ok=True)
        commit = api.upload_folder(
            folder_path=str(folder), repo_id=repo_id, repo_type="model", commit_message=commit_message
        )
    except Exception as err:  # huggingface_hub errors may quote request headers; mask before showing anything
        raise HubUploadError(
            f"upload to {repo_id} failed: {type(err).__name__}: "
            f"{redact(str(err), [secret, os.environ.get('HF_TOKEN')])}"
        ) from None
    summary.update(uploaded=True, url=str(getattr(commit, "commit_url", None) or repo_url))
    return summary


def main(argv: list[str] | None = None) -> dict:
    from .options import PushOptions, parse_options, print_result

    opts = parse_options(PushOptions, argv, prog="hsrm push", description=PushOptions.__doc__)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if opts.token:
        logger.warning("a token given with --token is visible in the process list and shell history; prefer HF_TOKEN")
    summary = push(
        opts.model,
        opts.repo_id,
        private=opts.private,
        token=opts.token,
        stage=opts.output,
        dry_run=opts.dry_run,
        commit_message=opts.commit_message,
        eval_files=opts.evaluations,
        overwrite=opts.overwrite,
    )
    if summary["uploaded"]:
        text = f"uploaded {len(summary['files'])} files to {summary['url']}"
    else:
        files = len(summary["files"])
        text = f"dry run: prepared {summary['stage']} ({files} files, README.md model card); nothing uploaded"
    print_result(summary, text, opts.json)
    return summary
