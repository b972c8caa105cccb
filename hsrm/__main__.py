"""``python -m hsrm VERB …``: the ``hsrm`` command, so that launchers which take a module run every verb
the same way (``torchrun --nproc_per_node 2 -m hsrm train RECIPE.yaml``, ``accelerate launch -m hsrm …``)."""

import sys

from .cli import run

if __name__ == "__main__":  # importing the module (doctests, tools that list modules) runs nothing
    sys.exit(run())
