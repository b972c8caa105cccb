"""Every command shown in README.md and docs/*.md names a real verb, real flags and real files.

Each `hsrm VERB …` line is parsed by that verb's own argparse (or HfArgumentParser) parser (execution is
stopped right after parsing), `hsrm train` / `-m hsrm.train` lines load their recipe with their overrides, and every
recipes/ or ds_configs/ path must exist. Running the commands themselves is the job of the feature
tests and of `hsrm demo` (tests/test_demo.py)."""

import argparse
import importlib
import re
import shlex
from pathlib import Path

import pytest

from conftest import REPO_ROOT
from hsrm.cli import VERBS
from hsrm.config import load_recipe, parse_overrides

DOCS = [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]
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
        if word.startswith(("recipes/", "ds_configs/")) and not PLACEHOLDER.search(word):
            assert (REPO_ROOT / word).exists(), f"{word} does not exist"
    if "--help" in words or "-h" in words:
        assert words[0] != "hsrm" or words[1] in VERBS
        return
    if words[0] in ("accelerate", "torchrun"):
        assert "-m" in words and words[words.index("-m") + 1] in ("hsrm.train", "hsrm.rloo")
        rest = words[words.index("-m") + 2:]
        if words[0] == "torchrun" or words[words.index("-m") + 1] == "hsrm.rloo":
            # distributed keys (ddp_backend, deepspeed) need a live process group to build; rloo recipes are parsed
            # by tests/test_rloo.py; files checked above
            return
    else:
        verb, rest = words[1], words[2:]
        if verb == "active":  # takes --key value overrides, not argparse: load the study without running it
            from hsrm.embedding.loop import load_study

            load_study(REPO_ROOT / rest[0], parse_overrides(rest[1:]))
            return
        assert verb in VERBS, f"unknown verb {verb}"
        if verb != "train":
            module_name, function = VERBS[verb]

            # parse_known_args is what both argparse's parse_args and HfArgumentParser's
            # parse_args_into_dataclasses (hsrm serve) call; a word left over is an unknown flag.
            def stop_after_parsing(self, args=None, namespace=None):
                parsed, unknown = original(self, args, namespace)
                assert not unknown, f"unknown arguments {unknown}"
                raise Parsed(parsed)

            original = argparse.ArgumentParser.parse_known_args
            monkeypatch.setattr(argparse.ArgumentParser, "parse_known_args", stop_after_parsing)
            entry = getattr(importlib.import_module(module_name), function)
            with pytest.raises(Parsed):
                entry(rest)
            return
    recipe = rest[0] if rest and not rest[0].startswith("--") else None
    if recipe and PLACEHOLDER.search(recipe):
        pytest.skip(f"placeholder recipe {recipe}")
    overrides = parse_overrides(rest[1:] if recipe else rest)
    # Placeholders are skipped; a --deepspeed file was checked above (building its config needs a process group).
    overrides = {k: v for k, v in overrides.items() if not (isinstance(v, str) and PLACEHOLDER.search(v)) and k != "deepspeed"}
    load_recipe(REPO_ROOT / recipe if recipe else None, {**overrides, "bf16": False, "use_cpu": True, "output_dir": "/tmp/unused"})
