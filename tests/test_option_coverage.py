"""Every option a verb declares is read by that verb's code: an option that is parsed, shown in
``--help`` and then ignored (``hsrm embed --data-format`` and ``--split`` were) misleads the user.

Read statically: each declared field must be read as an attribute (``opts.split``; not a method
call such as ``text.split(...)``) or through ``getattr(x, "name")`` somewhere in the modules that
run the verb. The engine's options (:class:`hsrm.options.EngineInput`) are read in one place, as
:class:`hsrm.scoring.RewardScorer`'s keywords, and every verb that declares them hands them on."""

from __future__ import annotations

import ast
import dataclasses
import inspect
from pathlib import Path

import pytest
import transformers
from trl import RLOOConfig

from hsrm import config, options, rloo, serve
from hsrm.embedding import loop, study
from hsrm.scoring import RewardScorer

HSRM = Path(options.__file__).parent

# verb → (its options classes, the modules that run it)
VERB_CODE = {
    "train": (
        [config.RewardConfig, config.JustifierConfig],
        ["train.py", "config.py", "modeling.py", "record.py", "trainers", "data", "packing"],
    ),
    "evaluate": ([options.EvaluateOptions], ["evaluation.py", "justifier_eval.py", "scoring.py"]),
    "expo": ([options.ExpoOptions], ["expo.py", "options.py"]),  # --coarse is read into coarse_grid there
    "score": ([options.ScoreOptions], ["scoring.py"]),
    "push": ([options.PushOptions], ["hub.py"]),
    "rloo": ([rloo.RLOOSetup], ["rloo.py"]),
    "embed": ([options.EmbedOptions], ["embedding/cli.py", "embedding/extract.py"]),
    "fit": ([options.FitOptions], ["embedding/cli.py"]),
    "study": ([study.StudyConfig], ["embedding/study.py", "embedding/cli.py"]),
    "active": ([loop.ActiveStudyConfig], ["embedding/loop.py", "embedding/active_cli.py"]),
    "select": ([options.SelectOptions], ["embedding/active_cli.py", "embedding/annotation_queue.py"]),
    "serve": ([serve.ServeOptions], ["serve.py"]),
    "demo": ([options.DemoOptions], ["demo.py"]),
}
FOREIGN = (transformers.TrainingArguments, RLOOConfig)  # their fields are read by the Trainer, not by hsrm
ENGINE = {f.name for f in dataclasses.fields(options.EngineInput)}


def declared(cls) -> set[str]:
    """The fields hsrm declares for a verb (not a foreign base's, not the engine's)."""
    foreign = {f.name for base in cls.__mro__ if base in FOREIGN for f in dataclasses.fields(base)}
    return {f.name for f in dataclasses.fields(cls)} - foreign - ENGINE


def sources(paths: list[str]) -> dict[Path, str]:
    files = []
    for name in paths:
        path = HSRM / name
        files += sorted(path.rglob("*.py")) if path.is_dir() else [path]
    return {file: file.read_text() for file in files}


def names_read(text: str) -> set[str]:
    """Attribute names read (not called) and the names given to ``getattr`` as text."""
    tree = ast.parse(text)
    called = {id(node.func) for node in ast.walk(tree) if isinstance(node, ast.Call)}
    read = {
        node.attr
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Load) and id(node) not in called
    }
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "getattr" and len(node.args) >= 2:
            if isinstance(node.args[1], ast.Constant) and isinstance(node.args[1].value, str):
                read.add(node.args[1].value)
    return read


@pytest.mark.parametrize("verb", sorted(VERB_CODE))
def test_every_declared_option_is_read_by_its_verb(verb):
    from hsrm.cli import VERBS

    classes, paths = VERB_CODE[verb]
    assert (HSRM / VERBS[verb][0].removeprefix("hsrm.").replace(".", "/")).with_suffix(".py").name in {
        Path(p).name for p in paths
    }, "the verb's own module is among those read"
    code = sources(paths)
    read = set().union(*(names_read(text) for text in code.values()))
    for cls in classes:
        unread = sorted(declared(cls) - read)
        assert not unread, f"hsrm {verb}: {cls.__name__} declares options its code never reads: {unread}"
        if issubclass(cls, options.EngineInput):
            assert any("engine_settings()" in text or "from_options(" in text for text in code.values()), (
                f"hsrm {verb} declares the engine's options but never hands them to the engine"
            )


def test_the_engine_options_are_the_scorers_keywords():
    keywords = set(inspect.signature(RewardScorer.__init__).parameters)
    assert ENGINE <= keywords, ENGINE - keywords
    assert "model" not in ENGINE  # the model is the verb's, the engine runs it


def test_a_declared_but_unread_option_is_caught():
    """The check above can fail: an option no code reads is reported."""

    @dataclasses.dataclass
    class WithUnused(options.Options):
        data_format: str = options.option("auto", "read nowhere")
        split: str | None = options.option(None, "read nowhere")

    code = "def run(opts):\n    return opts.data_format, 'a,b'.split(',')\n"
    assert declared(WithUnused) - names_read(code) == {"split"}
