"""`hsrm <verb> …`: each verb lives in its own module and is imported only when used.

    hsrm train RECIPE.yaml [--key value …]
    hsrm evaluate --model DIR --data SOURCE [--output FILE.json]
    hsrm expo --weak DIR --strong DIR (--alpha A | --search --data SOURCE) --out DIR
    hsrm score --model DIR --data FILE [--output FILE.jsonl]
    hsrm push --model DIR --repo-id NAME [--private] [--dry-run]
    hsrm serve --model DIR [--port N] [--max-batch-tokens N] [--max-wait-ms MS]   (HTTP reward server)
    hsrm embed | fit | study | active | select …   (the lightweight path)
    hsrm demo [--out DIR]
"""

from __future__ import annotations

import importlib
import sys

# verb → (module, function taking argv); modules are imported only when their verb is used
VERBS = {
    "train": ("hsrm.train", "main"),
    "evaluate": ("hsrm.evaluate", "main"),
    "expo": ("hsrm.expo", "main"),
    "score": ("hsrm.scoring", "main"),
    "push": ("hsrm.hub", "main"),
    "embed": ("hsrm.embedding.cli", "embed_main"),
    "fit": ("hsrm.embedding.cli", "fit_main"),
    "study": ("hsrm.embedding.cli", "study_main"),
    "active": ("hsrm.embedding.active_cli", "active_main"),
    "select": ("hsrm.embedding.active_cli", "select_main"),
    "serve": ("hsrm.serve", "main"),
    "demo": ("hsrm.demo", "main"),
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    verb, rest = argv[0], argv[1:]
    if verb not in VERBS:
        import difflib

        guess = difflib.get_close_matches(verb, VERBS, 1)
        print(f"hsrm: unknown command {verb!r}" + (f"; did you mean {guess[0]!r}?" if guess else "") + "\n" + __doc__, file=sys.stderr)
        return 2
    try:
        module_name, function_name = VERBS[verb]
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name and err.name.startswith("hsrm"):
            print(f"hsrm {verb}: not available in this version", file=sys.stderr)
            return 2
        raise
    entry = getattr(module, function_name)
    from .trainers.base import NonFiniteLossError, TrainingInterrupted

    try:
        entry(rest)
    except TrainingInterrupted as err:
        print(f"hsrm {verb}: {err}", file=sys.stderr)
        return 143  # 128 + SIGTERM, what a scheduler expects from a job it stopped
    except (ValueError, FileNotFoundError, NonFiniteLossError) as err:
        # Input problems get one clear line, not a traceback; HSRM_DEBUG=1 shows the traceback.
        import os

        if os.environ.get("HSRM_DEBUG"):
            raise
        print(f"hsrm {verb}: error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
