"""Rendering, truncation that keeps the scored token, pad == eos, and padding-invariant rewards."""

import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from hsrm.data.render import TruncationStats, encode, ensure_distinct_pad_token, pad_sequences, render_text
from hsrm.modeling import check_model_folder, last_token_index, load_reward_model, reward_outputs, scalar_reward

PROMPT = [{"role": "user", "content": "What is the capital of France?"}]


def test_chat_template_and_no_duplicated_bos(tiny_tokenizer):
    text = render_text(tiny_tokenizer, PROMPT, "Paris.")
    assert (
        text == "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\nParis.<|im_end|>\n"
    )
    ids = encode(tiny_tokenizer, PROMPT, "Paris.", None)
    assert ids.count(tiny_tokenizer.convert_tokens_to_ids("<|im_start|>")) == 2  # one per turn, none added on top


def test_left_truncation_keeps_the_end_of_the_response(tiny_tokenizer):
    long_prompt = [{"role": "user", "content": "bread " * 200}]
    full = encode(tiny_tokenizer, long_prompt, "The capital of France is Paris.", None)
    stats = TruncationStats()
    cut = encode(tiny_tokenizer, long_prompt, "The capital of France is Paris.", 32, stats)
    assert len(cut) == 32 and cut == full[-32:]
    assert stats.truncated == 1 and stats.tokens_cut == len(full) - 32
    assert tiny_tokenizer.decode(cut).endswith("Paris.<|im_end|>\n")


def test_pad_token_made_distinct_from_eos(tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    assert tokenizer.pad_token_id == tokenizer.eos_token_id  # the fixture reproduces the pitfall
    model, tokenizer, _ = load_reward_model(str(tiny_model_dir))
    assert tokenizer.pad_token_id != tokenizer.eos_token_id
    assert model.config.pad_token_id == tokenizer.pad_token_id


def test_pad_token_added_when_no_candidate_exists():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForSequenceClassification, PreTrainedTokenizerFast

    raw = Tokenizer(models.WordLevel({"<|im_end|>": 0, "a": 1, "b": 2}, unk_token="a"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=raw, eos_token="<|im_end|>", pad_token="<|im_end|>")
    model = LlamaForSequenceClassification(
        LlamaConfig(
            vocab_size=3,
            hidden_size=8,
            intermediate_size=16,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=1,
            num_labels=1,
        )
    )
    pad_id = ensure_distinct_pad_token(tokenizer, model)
    assert tokenizer.pad_token == "<|pad|>" and pad_id == 3
    assert model.get_input_embeddings().num_embeddings == 4 and model.config.pad_token_id == 3


def test_last_token_index_left_and_right():
    mask = torch.tensor([[1, 1, 1, 0, 0], [0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    assert last_token_index(mask).tolist() == [2, 4, 4]


@pytest.fixture(scope="module")
def reward_model(tiny_model_dir):
    model, tokenizer, _ = load_reward_model(str(tiny_model_dir), device="cpu")
    return model, tokenizer


def padded(sequences, pad_id, side="right"):
    ids, mask = pad_sequences(sequences, pad_id, side)
    return {"input_ids": ids, "attention_mask": mask}


def test_reward_is_padding_invariant(reward_model):
    model, tokenizer = reward_model
    a = encode(tokenizer, PROMPT, "Paris.", None)
    b = encode(tokenizer, [{"role": "user", "content": "hi"}], "Thank you, here is a clear answer about bread.", None)
    with torch.no_grad():
        alone = [reward_outputs(model, padded([s], tokenizer.pad_token_id)).item() for s in (a, b)]
        right = reward_outputs(model, padded([a, b], tokenizer.pad_token_id, "right")).squeeze(-1).tolist()
        left = reward_outputs(model, padded([a, b], tokenizer.pad_token_id, "left")).squeeze(-1).tolist()
        # a different pad id must not matter either: hsrm reads the attention mask, not the pad id
        other_pad = reward_outputs(model, padded([a, b], tokenizer.eos_token_id, "right")).squeeze(-1).tolist()
    assert right == pytest.approx(alone, abs=1e-5)
    assert left == pytest.approx(alone, abs=1e-5)
    assert other_pad == pytest.approx(alone, abs=1e-5)


def test_plain_transformers_pooling_agrees_after_pad_fix(reward_model, tmp_path):
    model, tokenizer = reward_model
    model.save_pretrained(tmp_path, safe_serialization=True)
    tokenizer.save_pretrained(tmp_path)
    plain = AutoModelForSequenceClassification.from_pretrained(str(tmp_path)).eval()
    plain_tok = AutoTokenizer.from_pretrained(str(tmp_path))
    texts = [render_text(plain_tok, PROMPT, "Paris."), render_text(plain_tok, PROMPT, "It is Paris, of course.")]
    batch = plain_tok(texts, add_special_tokens=False, padding=True, return_tensors="pt")
    with torch.no_grad():
        theirs = plain(**batch).logits.squeeze(-1)
        ours = reward_outputs(
            model, {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
        ).squeeze(-1)
    assert theirs.tolist() == pytest.approx(ours.tolist(), abs=1e-5)


def test_scalar_reward_heads():
    outputs = torch.tensor([[3.0, 1.0, 0.0, 2.0, 4.0]])
    assert scalar_reward(outputs).item() == 3.0  # helpfulness
    assert scalar_reward(outputs, [0.5, 0.5, 0, 0, -1]).item() == pytest.approx(1.5 + 0.5 - 4.0)
    with pytest.raises(ValueError, match="2 attribute weights"):
        scalar_reward(outputs, [1, 2])


def test_folder_checks(tmp_path):
    with pytest.raises(FileNotFoundError, match="no config.json"):
        check_model_folder(str(tmp_path))
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "pytorch_model.bin").write_bytes(b"x")
    with pytest.raises(ValueError, match="safetensors only"):
        check_model_folder(str(tmp_path))
