"""Tiny models and a real tokenizer built locally in seconds: `hsrm demo --quick`, `tiny-random` models in
RLOO recipes, benchmarks and the tests. No download; the weights are random.

The tokenizer is a byte-level BPE trained offline with a ChatML template, and its pad token is
deliberately the EOS token (as in Llama-3 and SmolLM2) so that every test exercises that pitfall.
"""

from __future__ import annotations

import os
from pathlib import Path

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

_CORPUS = """The quick brown fox jumps over the lazy dog. A helpful assistant answers the question clearly.
User asks how to bake bread; the assistant explains flour, water, yeast and salt, then kneading and baking.
Response one is better because it is correct, concise and polite. Response two is wrong and rude.
Numbers 0 1 2 3 4 5 6 7 8 9 good bad great terrible yes no maybe please thank you sorry.
Python code def return import class for while if else print list dict string integer float.
Human: What is the capital of France? Assistant: The capital of France is Paris.
@Response 1 is better than @Response 2. @Response 2 is slightly better. Overall, @Response 1 is much better.
"""


def build_tiny_tokenizer(out_dir: str | os.PathLike, vocab_size: int = 400):
    """Train a byte-level BPE on a small built-in corpus and save it as a fast tokenizer folder."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([_CORPUS] * 20, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        unk_token="<|endoftext|>",
        pad_token="<|im_end|>",
    )
    fast.chat_template = CHATML_TEMPLATE
    fast.save_pretrained(str(out_dir))
    return fast


def build_tiny_llama(
    out_dir: str | os.PathLike,
    num_labels: int = 1,
    seed: int = 0,
    hidden_size: int = 32,
    num_layers: int = 2,
    causal_lm: bool = False,
    tokenizer=None,
) -> Path:
    """A random Llama-architecture sequence classifier (or causal LM) plus tokenizer, saved as a
    plain safetensors folder. About 30k parameters: a forward pass takes milliseconds."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = tokenizer or build_tiny_tokenizer(out)
    if tokenizer is not None:
        tokenizer.save_pretrained(str(out))
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        num_labels=num_labels,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = (LlamaForCausalLM if causal_lm else LlamaForSequenceClassification)(config)
    model.save_pretrained(str(out), safe_serialization=True)
    return out
