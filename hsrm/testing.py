"""Test helpers that hsrm's own code never imports: the real ``hsrm serve`` in a subprocess (tests,
``bench/serve.py``). The tiny models the tests build are in :mod:`hsrm.tiny`."""

from __future__ import annotations

import os
from pathlib import Path


class ServeProcess:
    """``hsrm serve ARGS --port 0`` in a subprocess, ready once ``/health`` answers 200: the real
    server for tests, ``bench/serve.py`` and the documented-command runs. The appended ``--port 0``
    wins over any ``--port`` in ARGS (the later flag counts), so each server gets a free port, read
    from the line it prints. The hsrm checkout this module belongs to comes first on PYTHONPATH, so
    the server runs this code and not an installed copy. A reader thread keeps the output (a full
    pipe would block the server)."""

    def __init__(
        self,
        serve_args: list[str],
        *,
        cwd: str | os.PathLike | None = None,
        env: dict[str, str] | None = None,
        timeout_s: float = 120.0,
    ):
        import re
        import subprocess
        import sys
        import threading
        import time

        checkout = str(Path(__file__).resolve().parents[1])
        path = os.pathsep.join([checkout, *filter(None, [os.environ.get("PYTHONPATH")])])
        full_env = {
            **os.environ,
            "TOKENIZERS_PARALLELISM": "false",
            "HF_HUB_OFFLINE": "1",
            **(env or {}),
            "PYTHONPATH": path,
        }
        self.process = subprocess.Popen(
            [sys.executable, "-m", "hsrm.cli", "serve", *serve_args, "--port", "0"],
            cwd=cwd,
            env=full_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
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


# ---------------------------------------------------------------------------------- FSDP on CPU
def allow_fsdp_on_cpu() -> None:
    """Let accelerate run FSDP on CPU processes (gloo), for tests only.

    accelerate 1.16 turns FSDP on only for GPU-like distributed types (``AcceleratorState``: the
    FSDP branch sits under MULTI_GPU/NPU/XPU/…); on CPU processes (MULTI_CPU) an FSDP config is
    ignored and the run silently trains with DDP. This lifts exactly that condition: the rest —
    accelerate's ``fsdp2_prepare_model`` (``fully_shard`` per decoder layer and on the root), the
    Trainer's FSDP save, sharded checkpoints and resume — runs as it does on GPUs.
    """
    import accelerate.state
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    original = accelerate.state.AcceleratorState.__init__
    if getattr(original, "hsrm_allows_fsdp_on_cpu", False):
        return

    def init(self, *args, **kwargs):
        original(self, *args, **kwargs)
        wanted = os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"
        if wanted and self.distributed_type == DistributedType.MULTI_CPU:
            self.distributed_type = DistributedType.FSDP
            self.fsdp_plugin = kwargs.get("fsdp_plugin") or FullyShardedDataParallelPlugin()
            if self._mixed_precision != "no":  # as accelerate's own FSDP branch does
                self.fsdp_plugin.set_mixed_precision(self._mixed_precision)

    init.hsrm_allows_fsdp_on_cpu = True
    accelerate.state.AcceleratorState.__init__ = init


def run_module_with_fsdp_on_cpu(module: str, argv: list[str]) -> None:
    """``python -m hsrm.testing MODULE ARGS...``: run MODULE as ``-m`` would, with FSDP allowed on CPU."""
    import runpy
    import sys

    allow_fsdp_on_cpu()
    sys.argv = [module, *argv]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    import sys

    run_module_with_fsdp_on_cpu(sys.argv[1], sys.argv[2:])
