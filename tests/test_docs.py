"""Every command shown in README.md and docs/*.md names a real verb, real flags and real files.

Each `hsrm VERB …` line (and `-m hsrm.train` / `-m hsrm.rloo` under a launcher) is parsed by that
verb's own options parser (hsrm.options), and stopped right after the flags are read and typed:
an unknown flag or a badly typed value fails here. Every recipes/, hsrm/recipes/ or ds_configs/ path must exist.
Running the commands themselves is tests/test_docs_run.py's job."""

import importlib
import re
import shlex
from pathlib import Path

import pytest

from conftest import REPO_ROOT
from hsrm.cli import VERBS
from hsrm.options import OptionsParser

DOCS = [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]
SAMPLE_RECIPE = "recipes/tiny_bt.yaml"
PLACEHOLDER = re.compile(r"^[A-Z][A-Z_]*(\.[a-z]+)?$|\.\.\.|…")


def shell_lines(path: Path, prefixes: tuple[str, ...] = ("hsrm ", "accelerate launch", "torchrun ")):
    """Shell commands in fenced blocks, continuation lines joined, `[optional …]` synopsis parts removed."""
    in_fence, in_shell, pending, start = False, False, "", 0
    for line_no, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip().startswith("```"):
            # A fence closes the open block whatever its language (a ```python block's closing ``` is
            # not the opening of a shell block), else it opens one.
            in_fence = not in_fence
            in_shell = in_fence and line.strip() in ("```bash", "```sh", "```console", "```")
            continue
        if not in_shell:
            continue
        text = line.split(" #")[0].strip().lstrip("$ ")
        if not pending:
            start = line_no
        pending = f"{pending} {text.rstrip(chr(92)).strip()}".strip()
        if text.endswith("\\"):
            continue
        command, pending = re.sub(r"\[[^\]]*\]", "", pending).strip(), ""
        if command.startswith(prefixes):
            yield f"{path.name}:{start}", command


COMMANDS = [pytest.param(text, id=where) for path in DOCS for where, text in shell_lines(path)]


class Parsed(Exception):
    pass


def test_docs_show_commands():
    assert len(COMMANDS) >= 25


@pytest.mark.parametrize("command", COMMANDS)
def test_documented_command_is_valid(command, monkeypatch):
    words = shlex.split(command)
    if len(words) > 1 and "..." in words[-1] or "…" in command:
        words = [w for w in words if w not in ("...", "…")]
    for word in words:
        if word.startswith(("recipes/", "hsrm/recipes/", "ds_configs/")) and not PLACEHOLDER.search(word):
            assert (REPO_ROOT / word).exists(), f"{word} does not exist"
    if words[0] in ("accelerate", "torchrun"):
        module = words[words.index("-m") + 1] if "-m" in words else None
        assert module in ("hsrm.train", "hsrm.rloo", "hsrm")
        after = words[words.index("-m") + 2 :]
        verb, rest = (after[0], after[1:]) if module == "hsrm" else (module.split(".")[1], after)
    else:
        verb, rest = words[1], words[2:]
    assert verb in VERBS, f"unknown verb {verb}"
    if "--help" in rest or "-h" in rest:
        return
    rest = [SAMPLE_RECIPE if word == "RECIPE.yaml" else word for word in rest]  # "any recipe"
    monkeypatch.chdir(REPO_ROOT)  # recipes/… paths are relative to a checkout

    def stop_after_reading_flags(self, args=None, return_remaining_strings=False, **kwargs):
        _, remaining = self.parse_known_args(args=args)
        assert not remaining, f"unknown options {remaining}"
        raise Parsed()

    monkeypatch.setattr(OptionsParser, "parse_args_into_dataclasses", stop_after_reading_flags)
    module_name, function, _ = VERBS[verb]
    with pytest.raises(Parsed):
        getattr(importlib.import_module(module_name), function)(rest)
