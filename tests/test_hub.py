"""hsrm push: the prepared folder and model card, its usage snippet, and a mocked upload in which
the token never shows up anywhere."""

from __future__ import annotations

import json
import logging
import re
import shutil
import traceback

import pytest

SECRET = "hf_SeCrEtToKeN1234567890abcdefXYZ"


@pytest.fixture()
def trained_folder(tmp_path, tiny_model_dir):
    """A tiny model dressed like an hsrm output: metadata, an evaluation result, an ExPO record,
    plus files that must not be uploaded."""
    folder = tmp_path / "scaled-bt-expo"
    shutil.copytree(tiny_model_dir, folder)
    config = json.loads((folder / "config.json").read_text())
    config["hsrm"] = {
        "objective": "scaled_bt",
        "base_model": "HuggingFaceTB/SmolLM2-135M-Instruct",
        "train_data": "nvidia/HelpSteer2",
        "init_from": "runs/helpfulness-regression",
        "attributes": ["helpfulness"],
        "attribute_weights": None,
        "max_length": 2048,
        "reward_mean": 0.25,
        "reward_std": 1.5,
        "reward_stats_on": "validation",
        "expo": {
            "weak": "runs/helpfulness-regression",
            "strong": "runs/scaled-bt",
            "alpha": 1.52,
            "searched_on": "val.jsonl",
            "metric": "rewardbench_overall",
            "score": 0.941,
            "strong_score": 0.937,
        },
    }
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "evaluation").mkdir()
    result = {
        "format": "rewardbench",
        "data": "reward_bench_filtered.jsonl",
        "n": 2985,
        "max_length": 2048,
        "metrics": {"accuracy": 0.93, "ties": 0, "margin": 3.2},
        "rewardbench": {
            "sections": {
                "Chat": {"score": 0.98, "subsets_present": 5, "subsets_official": 5},
                "Chat Hard": {"score": 0.857, "subsets_present": 6, "subsets_official": 6},
            },
            "overall": 0.9185,
            "sections_missing": ["Safety", "Reasoning"],
        },
    }
    (folder / "evaluation" / "rewardbench.json").write_text(json.dumps(result))
    (folder / "training_args.bin").write_bytes(b"pickle")
    (folder / "checkpoints").mkdir()
    (folder / "checkpoints" / "optimizer.pt").write_bytes(b"x")
    return folder


def test_dry_run_prepares_folder_and_card(trained_folder, capsys):
    from hsrm.cli import main as cli

    stage = trained_folder.parent / "stage"
    assert (
        cli(
            [
                "push",
                "--model",
                str(trained_folder),
                "--repo-id",
                "me/scaled-bt-expo",
                "--dry-run",
                "--output",
                str(stage),
            ]
        )
        == 0
    )
    assert "dry run" in capsys.readouterr().out
    files = sorted(str(p.relative_to(stage)) for p in stage.rglob("*") if p.is_file())
    assert files == [
        "README.md",
        "chat_template.jinja",
        "config.json",
        "evaluation/rewardbench.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    ]
    card = (stage / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: transformers")
    assert "base_model: HuggingFaceTB/SmolLM2-135M-Instruct" in card and "- nvidia/HelpSteer2" in card
    assert "Scaled Bradley-Terry: −m · log σ" in card
    assert "**α = 1.52**" in card
    assert "| Chat Hard | 6 of 6 | 85.7 |" in card and "**91.8**" in card
    assert "mean 0.2500, std 1.5000" in card


def test_card_snippet_reproduces_hsrm_reward(trained_folder):
    """The plain-transformers snippet in the card gives the reward RewardScorer gives."""
    from hsrm.hub import prepare_upload_folder
    from hsrm.scoring import RewardScorer

    stage = prepare_upload_folder(trained_folder, "me/rm", trained_folder.parent / "stage")
    card = (stage / "README.md").read_text()
    snippet = re.search(r"```python\n(.*?)```", card, re.S).group(1).replace('"me/rm"', repr(str(stage)))
    namespace: dict = {}
    exec(compile(snippet, "card-snippet", "exec"), namespace)  # noqa: S102 - our own generated text
    expected = RewardScorer(str(stage)).score(["What is the capital of France?"], ["The capital of France is Paris."])[
        0
    ]
    assert namespace["reward"] == pytest.approx(expected, abs=1e-5)


class FakeApi:
    calls: list = []
    fail_with: str | None = None

    def __init__(self, token=None, **kwargs):
        FakeApi.calls.append(("init", token))

    def create_repo(self, repo_id, private=False, repo_type=None, exist_ok=False):
        FakeApi.calls.append(("create_repo", repo_id, private, repo_type))
        if FakeApi.fail_with:
            raise RuntimeError(FakeApi.fail_with)
        return f"https://huggingface.co/{repo_id}"

    def upload_folder(self, folder_path, repo_id, repo_type=None, commit_message=None):
        FakeApi.calls.append(("upload_folder", folder_path, repo_id))
        return type("Commit", (), {"commit_url": f"https://huggingface.co/{repo_id}/commit/abc"})()


def test_upload_uses_env_token_and_never_shows_it(trained_folder, monkeypatch, capsys, caplog):
    import huggingface_hub

    from hsrm.cli import main as cli

    monkeypatch.setenv("HF_TOKEN", SECRET)
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    FakeApi.calls, FakeApi.fail_with = [], None
    caplog.set_level(logging.DEBUG)
    stage = trained_folder.parent / "stage"
    assert cli(["push", "--model", str(trained_folder), "--repo-id", "me/rm", "--private", "--output", str(stage)]) == 0
    assert FakeApi.calls[0] == ("init", SECRET)
    assert FakeApi.calls[1] == ("create_repo", "me/rm", True, "model")
    assert FakeApi.calls[2] == ("upload_folder", str(stage), "me/rm")
    out = capsys.readouterr()
    assert "uploaded 7 files to https://huggingface.co/me/rm/commit/abc" in out.out
    seen = (
        out.out
        + out.err
        + caplog.text
        + "".join(p.read_text(errors="ignore") for p in stage.rglob("*") if p.suffix in (".md", ".json"))
    )
    assert SECRET not in seen


def test_failed_upload_masks_the_token_in_the_error(trained_folder, monkeypatch, capsys, caplog):
    import huggingface_hub

    from hsrm.cli import main as cli
    from hsrm.hub import HubUploadError

    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    FakeApi.calls, FakeApi.fail_with = [], f"401 Unauthorized: header Authorization: Bearer {SECRET} rejected"
    caplog.set_level(logging.DEBUG)
    # The CLI reports the failure in one line (exit 1), token masked ...
    assert cli(["push", "--model", str(trained_folder), "--repo-id", "me/rm", "--token", SECRET]) == 1
    out = capsys.readouterr()
    assert (
        out.err.strip().splitlines()[-1] == "hsrm push: error: upload to me/rm failed: RuntimeError: 401 Unauthorized: "
        "header Authorization: Bearer *** rejected"
    )
    assert SECRET not in out.out + out.err + caplog.text and "Traceback" not in out.err
    assert "--token is visible" in caplog.text  # the warning about command-line tokens, without the token
    # ... and the traceback HSRM_DEBUG=1 shows holds no token either.
    monkeypatch.setenv("HSRM_DEBUG", "1")
    with pytest.raises(HubUploadError) as info:
        cli(["push", "--model", str(trained_folder), "--repo-id", "me/rm", "--token", SECRET])
    shown = "".join(traceback.format_exception(info.value))
    assert "401 Unauthorized" in shown and "Bearer ***" in shown
    assert SECRET not in shown


def test_missing_token_is_a_clear_error(trained_folder, monkeypatch):
    import huggingface_hub

    from hsrm.hub import push

    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    with pytest.raises(ValueError, match="no Hugging Face token"):
        push(str(trained_folder), "me/rm")
    with pytest.raises(ValueError, match="user-or-org/name"):
        push(str(trained_folder), "no-namespace", dry_run=True)
