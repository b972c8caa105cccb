"""The lightweight path: reward models on a frozen backbone's embeddings.

Paper: Sun et al., "Rethinking Bradley-Terry Models in Preference-Based Reward Modeling"
(sections 3, 4, 6; appendix D). Modules: extract (embeddings + disk cache, and the one reader of
embedding files), models (BT-MLP, CLF-MLP, CLF-LGB), annotate (golden reward, simulated annotators,
every pair builder), synthetic (embeddings with a known reward), study (``hsrm study``'s grid),
active and loop (active selection, ``hsrm active``'s online loop), annotation_queue (``hsrm
select``'s state machine), runner (both studies' processes and resume), plots (both studies'
figures). The metrics (Best-of-N reward and gain, Spearman, entropy) are :mod:`hsrm.metrics`.
Heavy pieces (transformers, lightgbm, matplotlib) are imported only where used.
"""

from ..metrics import best_of_n_gain, evaluate_scores, per_prompt_spearman  # noqa: F401
from .annotate import (  # noqa: F401
    AnnotatedPairs,
    ResponsePool,
    annotate_pairs,
    build_pairs,
    expected_error_rate,
    select_design,
    simulate_annotations,
)
from .models import (  # noqa: F401
    METHOD_NAMES,
    EnsembleRewardModel,
    LGBRewardModel,
    MLPRewardModel,
    MLPSettings,
    fit_bt_mlp,
    fit_clf_lgb,
    fit_clf_mlp,
    fit_ensemble,
    fit_reward_model,
    load_model,
    pairs_to_pointwise,
    save_model,
)
from .synthetic import SyntheticWorld  # noqa: F401
