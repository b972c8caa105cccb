"""`import hsrm` is cheap and its public names are the library's own objects (issue 24)."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys

import pytest
import torch

import hsrm
from conftest import REPO_ROOT

PROBE = """
import json, sys
import hsrm
after_import = sorted(m for m in ("torch", "transformers") if m in sys.modules)
hsrm.load_reward_model, hsrm.RewardScorer, hsrm.extrapolate, hsrm.evaluate, hsrm.score, hsrm.losses
import hsrm.train, hsrm.trainers.pairwise  # importing a trainer registers nothing with transformers
from transformers import AttentionInterface
print(json.dumps({"after_import": after_import,
                  "trainer_modules": sorted(m for m in sys.modules if m.startswith("transformers.trainer")
                                            and m != "transformers.trainer_utils"),
                  "varlen_registered": "hsrm_varlen" in AttentionInterface._global_mapping}))
"""


def test_import_is_lazy_and_registers_nothing():
    """A fresh interpreter: ``import hsrm`` loads neither torch nor transformers; the public names load
    without transformers' Trainer, and importing the trainers registers no attention backend."""
    probe = PROBE.replace("import hsrm.train, hsrm.trainers.pairwise", "pass")
    lazy = json.loads(
        subprocess.run([sys.executable, "-c", probe], cwd=REPO_ROOT, check=True, capture_output=True, text=True).stdout
    )
    assert lazy == {"after_import": [], "trainer_modules": [], "varlen_registered": False}
    with_trainers = json.loads(
        subprocess.run([sys.executable, "-c", PROBE], cwd=REPO_ROOT, check=True, capture_output=True, text=True).stdout
    )
    assert with_trainers["varlen_registered"] is False


def test_public_names_are_the_modules_objects():
    from hsrm.evaluation import evaluate_model
    from hsrm.expo import extrapolate_folder
    from hsrm.modeling import load_reward_model
    from hsrm.scoring import RewardScorer

    assert hsrm.load_reward_model is load_reward_model and hsrm.RewardScorer is RewardScorer
    assert hsrm.evaluate is evaluate_model and hsrm.extrapolate is extrapolate_folder
    importlib.import_module("hsrm.evaluation")  # the module is hsrm.evaluation, so this cannot shadow the function
    assert hsrm.evaluate is evaluate_model
    assert set(hsrm.__all__) == {"__version__", *hsrm._PUBLIC} and set(hsrm.__all__) <= set(dir(hsrm))
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        hsrm.nope  # noqa: B018


def test_score_matches_the_scorer_and_a_plain_forward_pass(tiny_model_dir):
    """``hsrm.score`` = ``RewardScorer.score`` = the head read at the last token of the chat-templated
    text by plain transformers (one sequence at a time, no padding)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    prompts, responses = ["What is 2+2?", "Name a colour."], ["4", "Blue, the colour of a clear sky."]
    rewards = hsrm.score(str(tiny_model_dir), prompts, responses, batch_size=2, max_length=64)
    scorer = hsrm.RewardScorer(str(tiny_model_dir), max_length=64)
    assert hsrm.score(scorer, prompts, responses) == pytest.approx(rewards, abs=1e-6)
    with pytest.raises(TypeError, match="batch_size"):
        hsrm.score(scorer, prompts, responses, batch_size=2)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir).eval()
    expected = []
    for prompt, response in zip(prompts, responses):
        ids = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}],
            tokenize=True,
            return_dict=False,
        )
        with torch.no_grad():
            expected.append(float(model(torch.tensor([ids])).logits[0, 0]))
    assert rewards == pytest.approx(expected, abs=1e-5)


def test_no_runtime_module_imports_the_test_helpers():
    """``hsrm.testing`` is for tests and benchmarks; the library's own modules build tiny models from ``hsrm.tiny``."""
    offenders = [
        str(path.relative_to(REPO_ROOT))
        for path in sorted((REPO_ROOT / "hsrm").rglob("*.py"))
        if path.name != "testing.py"
        and any(
            needle in path.read_text(encoding="utf-8") for needle in ("from .testing", "from ..testing", "hsrm.testing")
        )
    ]
    assert offenders == []


HELP_PROBE = """
import contextlib, io, json, sys
from hsrm.cli import VERBS, main
loaded = {}
for verb in VERBS:
    if verb == "rloo":  # its options are TRL's RLOOConfig: TRL is imported to read them
        continue
    with contextlib.redirect_stdout(io.StringIO()):
        main([verb, "--help"])
    trainers = sorted(m for m in sys.modules if m in ("transformers.trainer", "trl") or m.startswith("hsrm.trainers"))
    if trainers:
        loaded[verb] = trainers
        break
print(json.dumps(loaded))
"""


def test_help_of_every_verb_imports_no_trainer():
    """`hsrm VERB --help` reads the options only. Before: every verb imported hsrm.trainers.base, and
    with it transformers' Trainer, to name two exceptions (15 s for `hsrm evaluate --help`, 6 s after)."""
    done = subprocess.run(
        [sys.executable, "-c", HELP_PROBE], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {}


def test_python_dash_m_hsrm_is_the_hsrm_command(tmp_path):
    """Before: `No module named hsrm.__main__; 'hsrm' is a package and cannot be directly executed`."""
    listed = subprocess.run([sys.executable, "-m", "hsrm", "--help"], capture_output=True, text=True, timeout=120)
    assert listed.returncode == 0 and "train" in listed.stdout and "score" in listed.stdout
    refused = subprocess.run(
        [sys.executable, "-m", "hsrm", "score", "--model", str(tmp_path / "missing"), "--data", "x.jsonl"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert refused.returncode == 1
    missing = tmp_path / "missing"
    assert refused.stderr.strip().splitlines()[-1] == f"hsrm score: error: model folder {missing} does not exist"
