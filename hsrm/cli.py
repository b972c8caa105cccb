"""`hsrm <verb>`: train, evaluate, serve and publish reward models (`hsrm <verb> --help` for a verb's options).

Every verb reads its options the same way (hsrm/options.py): `--config FILE.yaml` (or the YAML as the
first argument) then command-line values, `--batch-size` = `--batch_size`, a human summary on stdout,
logs on stderr, `--json` for the result document. A mistake in what the user gave (options, data,
files) is one line; anything else is a bug and keeps its traceback (HSRM_DEBUG=1: always the traceback).
"""

from __future__ import annotations

import importlib
import sys

# verb → (module, function taking argv, one line of help); modules are imported only when their verb is used
VERBS = {
    "train": (
        "hsrm.train",
        "main",
        "train a reward model (regression, BT family) or a generative justifier from a recipe",
    ),
    "evaluate": (
        "hsrm.evaluation",
        "main",
        "RewardBench sections, pairwise accuracy or rating errors (--justifier: a judge)",
    ),
    "expo": ("hsrm.expo", "main", "extrapolate two checkpoints' weights, with the factor searched on validation data"),
    "score": ("hsrm.scoring", "main", "reward every response of a file and pick the Best-of-N per prompt"),
    "push": ("hsrm.hub", "main", "write a model card and upload a reward model to the Hugging Face Hub"),
    "rloo": ("hsrm.rloo", "main", "align a policy with an hsrm reward model: RLOO on TRL's RLOOTrainer"),
    "embed": (
        "hsrm.embedding.cli",
        "embed_main",
        "embed (prompt, response) rows with a frozen backbone (lightweight path)",
    ),
    "fit": (
        "hsrm.embedding.cli",
        "fit_main",
        "fit or apply an embedding-space reward model (BT-MLP, CLF-MLP, LightGBM)",
    ),
    "study": (
        "hsrm.embedding.cli",
        "study_main",
        "sweep embedding-space reward models over β, annotations, pairing, seeds",
    ),
    "active": (
        "hsrm.embedding.active_cli",
        "active_main",
        "the simulated online active-learning study (D-opt and rivals)",
    ),
    "select": ("hsrm.embedding.active_cli", "select_main", "choose the next batch of pairs for human annotators"),
    "serve": ("hsrm.serve", "main", "an HTTP reward server for RL trainers (/score, OpenRLHF's /get_reward), batched"),
    "demo": ("hsrm.demo", "main", "the first hour in one command: regression → BT → ExPO, RewardBench, Best-of-N"),
}


def usage() -> str:
    width = max(map(len, VERBS))
    return __doc__ + "\nverbs:\n" + "\n".join(f"  {verb:<{width}}  {text}" for verb, (_, _, text) in VERBS.items())


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    verb, rest = argv[0], argv[1:]
    if verb not in VERBS:
        import difflib

        guess = difflib.get_close_matches(verb, VERBS, 1)
        print(
            f"hsrm: unknown command {verb!r}" + (f"; did you mean {guess[0]!r}?" if guess else "") + "\n" + usage(),
            file=sys.stderr,
        )
        return 2
    try:
        module_name, function_name, _ = VERBS[verb]
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name and err.name.startswith("hsrm"):
            print(f"hsrm {verb}: not available in this version", file=sys.stderr)
            return 2
        raise
    entry = getattr(module, function_name)
    import os

    # from errors, not from the trainers: `hsrm VERB --help` must not import transformers' Trainer
    from .errors import TrainingInterrupted

    try:
        try:
            entry(rest)
            code = 0
        except SystemExit as exit_:  # --help
            code = exit_.code if isinstance(exit_.code, int) else 0
        sys.stdout.flush()  # inside the try: a reader that left shows up here, not at interpreter exit
        return code
    except TrainingInterrupted as err:
        print(f"hsrm {verb}: {err}", file=sys.stderr)
        return 143  # 128 + SIGTERM, what a scheduler expects from a job it stopped
    except BrokenPipeError:
        # `hsrm train --help | head`: the reader left. Point stdout at /dev/null so that the
        # interpreter's final flush does not raise again, and exit as a process killed by SIGPIPE.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except Exception as err:
        if os.environ.get("HSRM_DEBUG"):
            raise
        if is_users_to_fix(err):
            print(f"hsrm {verb}: error: {err}", file=sys.stderr)
        else:
            import traceback

            traceback.print_exc()
            print(BUG_REPORT.format(verb=verb), file=sys.stderr)
        return 1


BUG_REPORT = (
    "hsrm {verb}: this is a bug in hsrm (or in a library it calls), not a problem with what you gave it; "
    "please report it with the command and the traceback above (pip freeze helps too)"
)


def is_users_to_fix(err: BaseException) -> bool:
    """One line for what the user can fix, a traceback for the rest (a bug must not hide behind one line).

    The user's: an :class:`hsrm.errors.UserError` (bad data or options, a refused output, a missing
    or damaged file, a missing extra) and a failed system call (an ``OSError`` with an errno: disk
    full, permission denied, connection refused). Everything else — a ValueError from inside torch,
    a KeyError — is a bug."""
    from .errors import UserError

    return isinstance(err, UserError) or (isinstance(err, OSError) and err.errno is not None)


def end_process(code: int) -> int:
    """End a process that holds a torch process group (one started by torchrun or accelerate launch,
    or one DeepSpeed set up): tear the group down and exit with ``code`` now, without finalizing the
    interpreter. Otherwise return ``code``. Only scripts call this, after their work is done and saved.

    Why not a normal exit: a Gloo worker thread can still be destroying a finished collective (an
    all-gather of ZeRO-3's) while the main thread finalizes the interpreter. The work drops tensors
    that own Python objects, so the thread waits for the GIL; Python ends it with pthread_exit inside
    a noexcept destructor and libstdc++ aborts the process ("terminate called without an active
    exception", pytorch/pytorch#38228). A ZeRO-3 rank that had saved its model died of SIGABRT and the
    launcher called the run failed: 5 of 20 two-process launches on a loaded 2-core machine, with gdb
    showing that stack. The atexit handlers (logging, trackers, temporary folders) still run.
    """
    import atexit
    import os

    dist = sys.modules.get("torch.distributed")  # never imported for `hsrm --help` and the like
    if dist is None or not (dist.is_available() and dist.is_initialized()):
        return code
    dist.destroy_process_group()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a reader that left, a closed stream: nothing more to say
            pass
    os._exit(code)


def run() -> int:
    """The `hsrm` console script."""
    return end_process(main())


if __name__ == "__main__":
    sys.exit(run())
