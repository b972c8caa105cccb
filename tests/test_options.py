"""One options layer for every verb (issue 18): typed dataclasses parsed by HfArgumentParser, --config,
one vocabulary, one YAML loader, the output convention."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
import yaml

from conftest import REPO_ROOT, make_learnable_pairs, write_jsonl
from hsrm.cli import VERBS
from hsrm.cli import main as cli
from hsrm.config import JustifierConfig, load_recipe, train_options
from hsrm.options import (
    DemoOptions,
    EmbedOptions,
    EvaluateOptions,
    ExpoOptions,
    FitOptions,
    OptionsError,
    PushOptions,
    ScoreOptions,
    SelectOptions,
    dump_options,
    options_from,
)


def verb_options():
    """verb → the dataclasses its --help must list, field by field."""
    from trl import RLOOConfig

    from hsrm.embedding.loop import ActiveStudyConfig
    from hsrm.embedding.study import StudyConfig
    from hsrm.rloo import RLOOSetup
    from hsrm.serve import ServeOptions

    return {
        "train": [JustifierConfig],
        "evaluate": [EvaluateOptions],
        "expo": [ExpoOptions],
        "score": [ScoreOptions],
        "push": [PushOptions],
        "rloo": [RLOOSetup, RLOOConfig],
        "embed": [EmbedOptions],
        "fit": [FitOptions],
        "study": [StudyConfig],
        "active": [ActiveStudyConfig],
        "select": [SelectOptions],
        "demo": [DemoOptions],
        "serve": [ServeOptions],
    }


# ------------------------------------------------------------------------------ values verbatim
def test_key_equals_value_is_kept_verbatim():
    """The old parser turned every `-` into `_` before splitting on `=` (runs/my-run → runs/my_run) and
    read `2024-01-01` as a date."""
    cfg = train_options(
        [
            "recipes/tiny_bt.yaml",
            "--output_dir=runs/my-run",
            "--run_name",
            "2024-01-01",
            "--learning_rate=1e-3",
            "--hub_model_id=me/a=b",
        ]
    )
    assert cfg.output_dir == "runs/my-run" and cfg.run_name == "2024-01-01" and cfg.hub_model_id == "me/a=b"
    assert cfg.learning_rate == 1e-3 and isinstance(cfg.learning_rate, float)
    assert train_options(["--output-dir", "runs/x-y", "--batch-size", "3"]).output_dir == "runs/x-y"


def test_list_fields_given_one_value_are_one_element_lists():
    from hsrm.embedding.loop import ActiveStudyConfig
    from hsrm.options import parse_options

    assert train_options(["--objective", "regression", "--attributes", "helpfulness"]).attributes == ["helpfulness"]
    active = parse_options(ActiveStudyConfig, ["--strategies", "dopt", "--seeds", "3", "--hidden", "8"], prog="t")
    assert active.strategies == ["dopt"] and active.seeds == [3] and active.hidden == [8]
    spelled_as_yaml = parse_options(ActiveStudyConfig, ["--strategies", "[random, dopt]", "--seeds=[0, 1]"], prog="t")
    assert spelled_as_yaml.strategies == ["random", "dopt"] and spelled_as_yaml.seeds == [0, 1]
    weights = train_options(
        ["--objective", "regression", "--attributes", "all", "--attribute_weights", "0.3", "0.2", "0.1", "0.1", "-0.4"]
    )
    assert weights.attribute_weights == [0.3, 0.2, 0.1, 0.1, -0.4]
    assert load_recipe(None, {"objective": "regression", "attributes": "helpfulness"}).attributes == ["helpfulness"]


def test_bad_and_unknown_values_are_one_line(capsys, tmp_path):
    assert cli(["train", "--max_steps", "abc"]) == 1
    err = capsys.readouterr().err.strip()
    assert (
        err == "hsrm train: error: argument --max_steps/--max-steps: invalid int value: 'abc' (see hsrm train --help)"
    )
    assert cli(["score", "--batchsize", "3"]) == 1
    assert "unknown option --batchsize (did you mean --batch_size?)" in capsys.readouterr().err
    recipe = tmp_path / "r.yaml"
    recipe.write_text("objective: bt\nlearnig_rate: 1.0e-5\n")
    with pytest.raises(OptionsError, match=r"unknown keys: learnig_rate \(did you mean learning_rate\?\)"):
        train_options([str(recipe)])
    with pytest.raises(OptionsError, match="flip_augmentation: justifier options, but the objective is bt"):
        train_options(["--objective", "bt", "--flip_augmentation"])
    with pytest.raises(OptionsError, match="give exactly one of --alpha A and --search"):
        options_from(ExpoOptions, {"weak": "a", "strong": "b", "output": "c"})


def test_config_file_then_command_line(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("objective: margin_bt\nlearning_rate: 1.0e-5\nsave_strategy: no\nmax_steps: 7\n")
    by_flag = train_options(["--config", str(recipe), "--max_steps", "3"])
    positional = train_options([str(recipe), "--max_steps", "3"])
    for cfg in (by_flag, positional):
        assert cfg.objective == "margin_bt" and cfg.learning_rate == 1e-5 and cfg.max_steps == 3
        assert (
            getattr(cfg.save_strategy, "value", cfg.save_strategy) == "no"
        )  # YAML 1.1's `no` is False; the field wants "no"
    justifier = train_options(["--config", str(REPO_ROOT / "recipes" / "justifier_tiny_cpu.yaml")])
    assert isinstance(justifier, JustifierConfig) and justifier.objective == "justifier"
    assert type(train_options([str(recipe)])).__name__ == "RewardConfig"  # no justifier keys on a scalar run


# ----------------------------------------------------------------------------------- --help
@pytest.mark.parametrize("verb", sorted(VERBS))
def test_every_verb_help_exits_zero_and_lists_every_field(verb, capsys):
    import dataclasses

    tables = verb_options()
    assert verb in tables, f"add {verb}'s options to this test"
    assert cli([verb, "--help"]) == 0
    printed = capsys.readouterr().out
    for dtype in tables[verb]:
        for field in dataclasses.fields(dtype):
            if field.init:
                assert f"--{field.name}" in printed, f"{verb} --help does not list {field.name}"


def test_hsrm_help_lists_every_verb_with_one_line(capsys):
    assert cli(["--help"]) == 0
    printed = capsys.readouterr().out
    for verb in VERBS:
        assert any(line.strip().startswith(verb + " ") for line in printed.splitlines()), verb


# ----------------------------------------------------------------------------------- recipes
RECIPES = sorted(
    str(p.relative_to(REPO_ROOT))
    for folder in (REPO_ROOT / "recipes", REPO_ROOT / "hsrm" / "recipes")  # hsrm/recipes: the package data
    for p in folder.rglob("*.yaml")
    if "accelerate" not in p.parts
)


def recipe_loader(recipe: Path):
    from hsrm.embedding.loop import load_active_study
    from hsrm.embedding.study import load_study
    from hsrm.rloo import load_rloo_recipe

    if "rloo" in recipe.name:
        return load_rloo_recipe
    if recipe.parent.name == "studies":
        load = load_active_study if recipe.name.startswith("active") else load_study
        return lambda path, values=None: load(path, values)
    return lambda path, values=None: (load_recipe(path, values),)


@pytest.mark.parametrize("recipe", RECIPES)
def test_every_recipe_loads_through_config_and_round_trips(recipe, tmp_path):
    """load → dump → load gives the same config (bf16 recipes are for GPUs: only that is overridden)."""
    path = REPO_ROOT / recipe
    gpu_free = {"bf16": False, "use_cpu": True} if path.parent.name != "studies" else {}
    load = recipe_loader(path)
    first = load(path, gpu_free)
    first = first if isinstance(first, tuple) else (first,)
    dumped = {}
    for part in first:
        dumped.update(dump_options(part))
    if dumped.get("steps_per_generation") is not None:
        # TRL's RLOOConfig derives generation_batch_size from steps_per_generation and refuses both given
        dumped.pop("generation_batch_size", None)
    again_path = tmp_path / "again.yaml"
    again_path.write_text(yaml.safe_dump(dumped))
    again = load(again_path)
    again = again if isinstance(again, tuple) else (again,)
    assert [dump_options(p) for p in again] == [dump_options(p) for p in first]


# ----------------------------------------------------------------------------------- vocabulary
SHARED = {
    "--model",
    "--data",
    "--output",
    "--batch-size",
    "--max-length",
    "--dtype",
    "--device",
    "--on-bad-rows",
    "--overwrite",
    "--json",
}
EXPECTED = {  # verb → the shared flags it takes (each verb that takes such a value spells it this way)
    "train": SHARED - {"--device"},  # a Trainer places its model itself (--use_cpu, the launcher)
    "evaluate": SHARED,
    "expo": SHARED - {"--model"},
    "score": SHARED - {"--on-bad-rows"},
    "push": {"--model", "--output", "--overwrite", "--json"},
    "embed": SHARED,
    "fit": {"--output", "--batch-size", "--overwrite", "--json"},
    "study": {"--output", "--overwrite", "--json"},
    "active": {"--output", "--overwrite", "--json"},
    "select": {"--output", "--batch-size", "--json"},
    "demo": {"--output", "--overwrite", "--json"},
    "rloo": {"--output", "--overwrite", "--json"},
    "serve": {"--model", "--batch-size", "--max-length", "--dtype", "--device", "--json"},
}
RETIRED = {
    "--out",
    "--stage",
    "--eval",
    "--format",
    "--scores-out",
}  # names that meant different things in different verbs


@pytest.mark.parametrize("verb", sorted(VERBS))
def test_shared_flags_are_spelled_one_way(verb, capsys):
    assert cli([verb, "--help"]) == 0
    words = {w.strip(",[]") for w in capsys.readouterr().out.split()}
    assert EXPECTED[verb] <= words, EXPECTED[verb] - words
    assert not (RETIRED & words), RETIRED & words
    underscored = {flag.replace("-", "_") if flag.count("-") > 2 else flag for flag in EXPECTED[verb]}
    assert all(flag.replace("_", "-") in words or flag in words for flag in underscored)


def test_one_yaml_loader_and_no_hand_written_parser():
    sources = {p: p.read_text() for p in (REPO_ROOT / "hsrm").rglob("*.py")}
    yaml_loaders = sorted(str(p.relative_to(REPO_ROOT)) for p, text in sources.items() if "yaml.safe_load" in text)
    assert yaml_loaders == ["hsrm/options.py"]
    assert not (REPO_ROOT / "hsrm" / "overrides.py").exists()
    argparse_parsers = sorted(
        str(p.relative_to(REPO_ROOT))
        for p, text in sources.items()
        if "ArgumentParser(" in text and p.name != "options.py"
    )
    assert argparse_parsers == []
    for path, text in sources.items():
        for node in ast.walk(ast.parse(text)):  # no `startswith("--")` loops over argv outside the options layer
            if (
                isinstance(node, ast.Call)
                and getattr(node.func, "attr", "") == "startswith"
                and node.args
                and isinstance(node.args[0], ast.Constant)
                and node.args[0].value == "--"
                and path.name != "options.py"
            ):
                raise AssertionError(f"{path}: a hand-written --key parser")


# ------------------------------------------------------------------------------- output convention
def test_summary_on_stdout_json_with_json_logs_on_stderr(tmp_path, tiny_model_dir, capsys):
    candidates = write_jsonl(tmp_path / "c.jsonl", [{"prompt": "q", "responses": ["a", "b c"]}])
    assert (
        cli(["score", "--model", str(tiny_model_dir), "--data", str(candidates), "--output", str(tmp_path / "s.jsonl")])
        == 0
    )
    human = capsys.readouterr()
    assert human.out.startswith("scored 2 responses to 1 prompts") and "INFO" not in human.out
    assert (
        cli(
            [
                "score",
                "--model",
                str(tiny_model_dir),
                "--data",
                str(candidates),
                "--output",
                str(tmp_path / "s.jsonl"),
                "--overwrite",
                "--json",
            ]
        )
        == 0
    )
    document = json.loads(capsys.readouterr().out)
    assert document["responses"] == 2 and len(document["rows"][0]["rewards"]) == 2
    pairs = write_jsonl(tmp_path / "p.jsonl", make_learnable_pairs(3, with_strength=False))
    assert (
        cli(
            [
                "evaluate",
                "--model",
                str(tiny_model_dir),
                "--data",
                str(pairs),
                "--output",
                str(tmp_path / "e.json"),
                "--json",
            ]
        )
        == 0
    )
    assert json.loads(capsys.readouterr().out)["metrics"]["n_pairs"] == 3


def test_every_verbs_help_says_each_default_once():
    """Before: 8 of 13 verbs printed "(required) (default: None)" or a default in words followed by
    "(default: None)" (argparse's ArgumentDefaultsHelpFormatter appends one to every option)."""
    import contextlib
    import io
    import re

    from hsrm.cli import VERBS, main

    for verb in VERBS:
        shown = io.StringIO()
        with contextlib.redirect_stdout(shown):
            assert main([verb, "--help"]) == 0
        text = re.sub(r"\s+", " ", shown.getvalue())
        assert "(default: None)" not in text and "(required) (default" not in text, verb
        if verb == "score":  # a default that is not in the words is still shown, once
            assert re.search(r"--batch_size .*?\(default: 8\)", text) and text.count("(default: 8)") == 1


def test_a_pairwise_run_given_other_attributes_is_refused_not_recorded_as_helpfulness():
    """Before: `objective: bt` with `attributes: [correctness]` trained and recorded `helpfulness`."""
    from hsrm.config import load_recipe

    with pytest.raises(ValueError, match=r"attributes \['correctness'\] with objective bt"):
        load_recipe(None, {"objective": "bt", "attributes": ["correctness"], "output_dir": "unused", "use_cpu": True})
    cfg = load_recipe(None, {"objective": "bt", "output_dir": "unused", "use_cpu": True})
    assert cfg.attributes == ["helpfulness"] and cfg.num_labels == 1


def test_fit_apply_names_the_fitted_model_and_keeps_its_old_spelling():
    """fit's model to apply is --apply (a fitted embedding model, not a reward model); scripts written
    with --model, its spelling before, still run."""
    from hsrm.options import FitOptions, parse_options

    for flag in ("--apply", "--model"):
        opts = parse_options(FitOptions, [flag, "fitted", "--eval-data", "e.npz"], prog="hsrm fit")
        assert opts.apply == "fitted" and opts.embeddings is None
