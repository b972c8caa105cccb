"""Tiny models and a real tokenizer built locally in seconds, for tests, benchmarks and quick demos.

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
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator([_CORPUS] * 20, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                   unk_token="<|endoftext|>", pad_token="<|im_end|>")
    fast.chat_template = CHATML_TEMPLATE
    fast.save_pretrained(str(out_dir))
    return fast


def build_tiny_llama(out_dir: str | os.PathLike, num_labels: int = 1, seed: int = 0, hidden_size: int = 32,
                     num_layers: int = 2, causal_lm: bool = False, tokenizer=None) -> Path:
    """A random Llama-architecture sequence classifier (or causal LM) plus tokenizer, saved as a
    plain safetensors folder. About 30k parameters: a forward pass takes milliseconds."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = tokenizer or build_tiny_tokenizer(out)
    if tokenizer is not None:
        tokenizer.save_pretrained(str(out))
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=2 * hidden_size,
                         num_hidden_layers=num_layers, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=1024, num_labels=num_labels, tie_word_embeddings=False,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(seed)
    model = (LlamaForCausalLM if causal_lm else LlamaForSequenceClassification)(config)
    model.save_pretrained(str(out), safe_serialization=True)
    return out


class ServeProcess:
    """``hsrm serve ARGS --port 0`` in a subprocess, ready once ``/health`` answers 200: the real
    server for tests, ``bench/serve.py`` and the documented-command runs. The appended ``--port 0``
    wins over any ``--port`` in ARGS (the later flag counts), so each server gets a free port, read
    from the line it prints. The hsrm checkout this module belongs to comes first on PYTHONPATH, so
    the server runs this code and not an installed copy. A reader thread keeps the output (a full
    pipe would block the server)."""

    def __init__(self, serve_args: list[str], *, cwd: str | os.PathLike | None = None, env: dict[str, str] | None = None,
                 timeout_s: float = 120.0):
        import re
        import subprocess
        import sys
        import threading
        import time

        checkout = str(Path(__file__).resolve().parents[1])
        path = os.pathsep.join([checkout, *filter(None, [os.environ.get("PYTHONPATH")])])
        full_env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", **(env or {}), "PYTHONPATH": path}
        self.process = subprocess.Popen([sys.executable, "-m", "hsrm.cli", "serve", *serve_args, "--port", "0"], cwd=cwd,
                                        env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        self.url = ""
        deadline = time.monotonic() + timeout_s
        while not self.url or not self._healthy():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.process.kill()
                raise RuntimeError(f"hsrm serve did not become ready within {timeout_s:g} s:\n{self.output()}")
            if not self.url and (match := re.search(r"hsrm serve: .* at (http://\S+) ", self.output())):
                self.url = match.group(1)
            time.sleep(0.05)

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.append(line)

    def _healthy(self) -> bool:
        import urllib.error
        import urllib.request

        try:
            with urllib.request.urlopen(self.url + "/health", timeout=5) as response:
                return response.status == 200
        except (urllib.error.URLError, OSError):
            return False

    @property
    def host_port(self) -> tuple[str, int]:
        host, port = self.url.removeprefix("http://").rsplit(":", 1)
        return host.strip("[]"), int(port)

    def output(self) -> str:
        return "".join(self.lines)

    def stop(self, timeout_s: float = 120.0) -> int:
        """SIGTERM (the server drains), then its exit code."""
        import signal

        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout_s)
        self.reader.join(5)
        return code
