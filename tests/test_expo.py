"""hsrm expo: exact extrapolation, streaming over shards, clear errors, and the factor search."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from conftest import write_jsonl
from hsrm.expo import extrapolate_folder, factor_grid, fine_grid, search_factor


def read_all(folder) -> dict[str, torch.Tensor]:
    tensors = {}
    for path in sorted(folder.glob("*.safetensors")):
        tensors.update(load_file(str(path)))
    return tensors


@pytest.fixture(scope="module")
def weak_strong(tmp_path_factory):
    from hsrm.tiny import build_tiny_llama

    root = tmp_path_factory.mktemp("expo")
    weak = build_tiny_llama(root / "weak", seed=0)
    strong = build_tiny_llama(root / "strong", seed=1)
    return weak, strong


@pytest.mark.parametrize("alpha", [0.0, 1.0, 1.5])
def test_output_equals_formula_exactly(tmp_path, weak_strong, alpha):
    weak, strong = weak_strong
    out = extrapolate_folder(weak, strong, alpha, tmp_path / "out", progress=False)
    w, s, got = read_all(weak), read_all(strong), read_all(out)
    assert set(got) == set(s)
    for key in s:
        expected = (w[key].double() + alpha * (s[key].double() - w[key].double())).float()  # exact math, rounded once
        assert got[key].dtype == s[key].dtype
        assert torch.equal(got[key], expected), key
        if alpha == 0.0:
            assert torch.equal(got[key], w[key])
        if alpha == 1.0:
            assert torch.equal(got[key], s[key])
    config = json.loads((out / "config.json").read_text())
    assert config["hsrm"]["expo"]["alpha"] == alpha
    assert (out / "tokenizer.json").read_bytes() == (strong / "tokenizer.json").read_bytes()
    from transformers import AutoModelForSequenceClassification

    AutoModelForSequenceClassification.from_pretrained(str(out))  # a plain, loadable folder


def test_sharded_bf16_strong_streams_shard_by_shard(tmp_path, weak_strong):
    """Strong saved in bf16 over several shards (index file), weak as one fp32 file: the output is
    sharded like the strong model, in bf16, and equals the formula computed in fp32."""
    from transformers import AutoModelForSequenceClassification

    weak, strong = weak_strong
    sharded = tmp_path / "strong-sharded"
    model = AutoModelForSequenceClassification.from_pretrained(str(strong), dtype=torch.bfloat16)
    model.save_pretrained(str(sharded), max_shard_size="20KB")
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        shutil.copy(strong / name, sharded / name)
    assert (sharded / "model.safetensors.index.json").exists()
    shards = sorted(p.name for p in sharded.glob("*.safetensors"))
    assert len(shards) > 1
    out = extrapolate_folder(weak, sharded, 1.5, tmp_path / "out", progress=False)
    assert sorted(p.name for p in out.glob("*.safetensors")) == shards
    assert (
        json.loads((out / "model.safetensors.index.json").read_text())["weight_map"]
        == json.loads((sharded / "model.safetensors.index.json").read_text())["weight_map"]
    )
    w, s, got = read_all(weak), read_all(sharded), read_all(out)
    for key in s:
        expected = (w[key].float() + 1.5 * (s[key].float() - w[key].float())).to(torch.bfloat16)
        assert got[key].dtype == torch.bfloat16
        assert torch.equal(got[key], expected), key


def test_incompatible_models_give_clear_errors(tmp_path, weak_strong):
    from hsrm.tiny import build_tiny_llama

    weak, _ = weak_strong
    wider = build_tiny_llama(tmp_path / "wider", hidden_size=48)
    with pytest.raises(ValueError, match="differ in shape.*embed_tokens"):
        extrapolate_folder(weak, wider, 1.5, tmp_path / "out1", progress=False)
    causal = build_tiny_llama(tmp_path / "causal", causal_lm=True)
    with pytest.raises(ValueError, match="architectures"):
        extrapolate_folder(weak, causal, 1.5, tmp_path / "out2", progress=False)
    three = build_tiny_llama(tmp_path / "three", num_labels=3)
    with pytest.raises(ValueError, match="score.weight"):
        extrapolate_folder(weak, three, 1.5, tmp_path / "out3", progress=False)
    with pytest.raises(ValueError, match="already exists"):
        (tmp_path / "taken").mkdir()
        (tmp_path / "taken" / "x").write_text("x")
        extrapolate_folder(weak, weak, 1.5, tmp_path / "taken", progress=False)
    assert not (tmp_path / "out1").exists()


def test_grids_follow_the_paper():
    assert factor_grid(1.1, 2.0, 0.1) == [1.1, 1.2, 1.3, 1.4, 1.5, 1.6, 1.7, 1.8, 1.9, 2.0]
    fine = fine_grid(1.6, 0.01, 0.09)
    assert fine[0] == 1.51 and fine[-1] == 1.69 and len(fine) == 19 and 1.52 in fine


def test_search_picks_the_best_factor_on_a_constructed_case(tmp_path):
    """Weak and strong share the body and differ only in the score head, so every pair's margin is
    exactly linear in α: m_i(α) = a_i + α·b_i. Heads are solved so that pair i flips at a chosen
    threshold; accuracy then peaks on the coarse grid at 1.6 and on the fine grid at 1.62 only."""
    from hsrm.cli import main as cli
    from hsrm.evaluation import load_eval_set
    from hsrm.scoring import RewardScorer
    from hsrm.tiny import build_tiny_llama

    base = build_tiny_llama(tmp_path / "base", seed=4)
    # No threshold sits on a grid point (coarse 0.1 steps, fine 0.01 steps): there the margin is 0
    # in exact arithmetic and its sign would be float32 rounding.
    lower = [1.15, 1.25, 1.35, 1.45, 1.555, 1.615]  # correct once α is above these
    upper = [1.625, 1.655, 1.75, 1.85, 1.95]  # correct while α is below these
    words = ["bread", "Paris", "thank you", "python", "numbers", "quick fox", "lazy dog", "yes", "no", "maybe", "great"]
    rows = [
        {"prompt": f"Question {i}: {w}?", "chosen": f"Answer {w} {i} good", "rejected": f"{w} bad {i} terrible"}
        for i, w in enumerate(words)
    ]
    data = write_jsonl(tmp_path / "val.jsonl", rows)

    scorer = RewardScorer(str(base), batch_size=1)
    eval_set = load_eval_set(str(data), scorer.tokenizer, max_length=scorer.max_length)
    captured = []
    hook = scorer.model.score.register_forward_hook(
        lambda module, inputs, output: captured.append(inputs[0][0].double())
    )
    for sequence in eval_set.sequences:
        scorer.score_ids([sequence])
    hook.remove()
    hidden = torch.stack(captured)
    n = len(rows)
    differences = hidden[:n] - hidden[n:]  # (pairs, hidden)
    slopes = torch.tensor([1.0] * len(lower) + [-1.0] * len(upper), dtype=torch.float64)
    thresholds = torch.tensor(lower + upper, dtype=torch.float64)
    intercepts = -thresholds * slopes  # m_i(t_i) = 0
    head_weak = torch.linalg.lstsq(differences, intercepts.unsqueeze(1)).solution.squeeze(1)
    head_step = torch.linalg.lstsq(differences, slopes.unsqueeze(1)).solution.squeeze(1)
    assert torch.allclose(differences @ head_step, slopes, atol=1e-8)

    def save_with_head(name, vector):
        folder = tmp_path / name
        shutil.copytree(base, folder)
        tensors = load_file(str(folder / "model.safetensors"))
        tensors["score.weight"] = vector.float().unsqueeze(0)
        from safetensors.torch import save_file

        save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
        return folder

    weak = save_with_head("weak", head_weak)
    strong = save_with_head("strong", head_weak + head_step)

    def expected_accuracy(alpha):
        return (sum(t < alpha for t in lower) + sum(t > alpha for t in upper)) / n

    search = search_factor(str(weak), str(strong), str(data), batch_size=4, progress=False)
    table = {row["alpha"]: row["score"] for row in search["table"]}
    for alpha, score in table.items():
        assert score == pytest.approx(expected_accuracy(alpha)), alpha
    assert search["coarse_best"]["alpha"] == 1.6
    assert search["best"]["alpha"] == 1.62 and search["best"]["score"] == 1.0
    assert len(table) == 1 + 10 + 18  # reference α=1, coarse grid, fine grid without the repeated 1.6

    out = tmp_path / "expo"
    # The CLI on a narrower grid (the full paper grid was checked above): 1.5, 1.6, 1.7 then 1.58 … 1.62.
    assert (
        cli(
            [
                "expo",
                "--weak",
                str(weak),
                "--strong",
                str(strong),
                "--search",
                "--data",
                str(data),
                "--output",
                str(out),
                "--coarse",
                "1.5,1.7,0.1",
                "--fine-radius",
                "0.02",
                "--batch-size",
                "4",
            ]
        )
        == 0
    )
    config = json.loads((out / "config.json").read_text())
    assert config["hsrm"]["expo"]["alpha"] == 1.62 and config["hsrm"]["expo"]["score"] == 1.0
    written = json.loads((out / "expo_search.json").read_text())
    assert written["chosen_alpha"] == 1.62 and [row["alpha"] for row in written["table"]] == [
        1.0,
        1.5,
        1.58,
        1.59,
        1.6,
        1.61,
        1.62,
        1.7,
    ]
    assert (out / "expo_search.csv").read_text().splitlines()[0] == "alpha,stage,metric,score,accuracy,margin"
    # the written model scores as the search said
    from hsrm.evaluation import evaluate_model

    assert evaluate_model(str(out), str(data), progress=False)["metrics"]["accuracy"] == 1.0


def test_in_memory_search_weights_equal_the_written_folder(tmp_path, weak_strong):
    from hsrm.expo import apply_extrapolation_, check_compatible
    from hsrm.modeling import load_reward_model

    weak, strong = weak_strong
    model, _, _ = load_reward_model(str(strong), device="cpu")
    apply_extrapolation_(model, *check_compatible(weak, strong), 1.37)
    written = read_all(extrapolate_folder(weak, strong, 1.37, tmp_path / "out", progress=False))
    state = model.state_dict()
    for key, value in written.items():
        assert torch.equal(state[key], value), key
