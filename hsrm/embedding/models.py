"""Reward models on frozen embeddings: BT-MLP, CLF-MLP and CLF-LGB (plus mean ensembles).

Paper: Sun et al., "Rethinking Bradley-Terry Models in Preference-Based Reward Modeling",
section 4 (order consistency: any model whose score orders responses like the golden reward
will do) and appendix D.6 (hyper-parameters, identical for every method):

* **BT-MLP** — a shared (Siamese) MLP f: R^d → R, units (1024, 512, 1), ReLU, no bias in the
  last layer, trained on pairs with the Bradley-Terry loss
  L = −mean log σ(s · (f(e₁) − f(e₂))),  s = +1 if the first response won else −1.
* **CLF-MLP** — the same network trained with BCE on each response's own label
  (the winner of a pair is labelled 1, the loser 0); its logit is the reward.
* **CLF-LGB** — LightGBM with ``objective=binary`` and default parameters on the same labels;
  its raw score (log-odds) is the reward.

All MLPs: Adam, lr 1e-3, at most 30 epochs, early stopping with patience 3 on a held-out 20 %
(the best epoch's weights are kept).

One deliberate addition, not in the paper: inputs are standardised with the training set's
per-dimension mean and std (stored in the model as buffers). LLM hidden states carry a few
"massive activation" dimensions hundreds of times larger than the rest, which stall Adam at
lr 1e-3; standardising keeps the paper's network and optimiser usable on any backbone.

Saved models are a folder: ``config.json`` + ``model.safetensors`` for MLPs, LightGBM's own
text format (``model.txt``) for boosters, one sub-folder per member for ensembles. No pickle.

Run: ``hsrm fit --embeddings EMB.npz --method bt-mlp --output DIR`` (see cli.py).
"""

from __future__ import annotations

import copy
import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, get_args

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError, MissingFileError

logger = logging.getLogger(__name__)

Method = Literal["bt-mlp", "clf-mlp", "clf-lgb"]
FitMethod = Literal["bt-mlp", "clf-mlp", "clf-lgb"]
METHOD_NAMES: tuple[str, ...] = get_args(FitMethod)
DEFAULT_HIDDEN = (1024, 512)
DEFAULT_BATCH_SIZE = 256  # pairs (BT) or responses (CLF) per Adam step; the paper does not state it
_SCORE_CHUNK = 8192  # rows per forward pass when scoring, to bound memory


@dataclass
class FitHistory:
    """What happened during an MLP fit: per-epoch losses, the epoch kept, the wall time."""

    train_loss: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    best_epoch: int = -1
    stopped_early: bool = False
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return {
            "train_loss": self.train_loss,
            "val_loss": self.val_loss,
            "best_epoch": self.best_epoch,
            "stopped_early": self.stopped_early,
            "seconds": self.seconds,
        }


class MLPRewardModel(nn.Module):
    """Reward r(e) = head(Φ(e)), Φ = ReLU MLP body over standardised embeddings; head has no bias.

    ``features`` gives the last-layer features Φ (n, hidden[-1]) that linear active-selection
    criteria (D-optimal design) work on; ``forward`` gives rewards (n,).
    """

    def __init__(self, input_dim: int, hidden: Sequence[int] = DEFAULT_HIDDEN, method: str = "bt-mlp"):
        super().__init__()
        if input_dim < 1:
            raise InputError(f"MLPRewardModel: input_dim must be positive, got {input_dim}")
        hidden = tuple(int(h) for h in hidden)
        if not hidden or any(h < 1 for h in hidden):
            raise InputError(f"MLPRewardModel: hidden must be a non-empty tuple of positive sizes, got {hidden}")
        self.input_dim = int(input_dim)
        self.hidden = hidden
        self.method = method
        layers: list[nn.Module] = []
        width = self.input_dim
        for size in hidden:
            layers += [nn.Linear(width, size), nn.ReLU()]
            width = size
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(width, 1, bias=False)  # no bias: BT is shift-invariant (D.6 units (…, 1))
        # Standardisation of the inputs (see the module docstring); identity until fitted.
        self.register_buffer("input_mean", torch.zeros(self.input_dim))
        self.register_buffer("input_std", torch.ones(self.input_dim))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Last-layer features Φ(x), shape (n, hidden[-1])."""
        x = x.to(self.input_mean.dtype)
        return self.body((x - self.input_mean) / self.input_std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Rewards, shape (n,)."""
        return self.head(self.features(x)).squeeze(-1)

    @torch.no_grad()
    def score(self, embeddings: np.ndarray) -> np.ndarray:
        """Rewards of a (n, d) array as float64 (n,), in chunks, without gradients."""
        embeddings = _check_matrix(embeddings, "embeddings", self.input_dim)
        was_training = self.training
        self.eval()
        out = np.empty(len(embeddings), dtype=np.float64)
        for start in range(0, len(embeddings), _SCORE_CHUNK):
            chunk = torch.from_numpy(np.ascontiguousarray(embeddings[start : start + _SCORE_CHUNK], dtype=np.float32))
            out[start : start + len(chunk)] = self(chunk).double().numpy()
        self.train(was_training)
        return out

    def set_standardization(self, embeddings: np.ndarray, max_rows: int = 20000, seed: int = 0) -> None:
        """Per-dimension mean and std from (a sample of) the training embeddings."""
        rng = np.random.default_rng(seed)
        if len(embeddings) > max_rows:
            embeddings = embeddings[np.sort(rng.choice(len(embeddings), max_rows, replace=False))]
        sample = np.asarray(embeddings, dtype=np.float64)
        mean = sample.mean(0)
        std = sample.std(0)
        # Constant dimensions carry nothing; dividing by 1 keeps them finite.
        std = np.where(std > 1e-6, std, 1.0)
        self.input_mean.copy_(torch.from_numpy(mean).float())
        self.input_std.copy_(torch.from_numpy(std).float())

    def config(self) -> dict:
        return {"kind": "mlp", "method": self.method, "input_dim": self.input_dim, "hidden": list(self.hidden)}


class LGBRewardModel:
    """A LightGBM binary classifier whose raw score (log-odds of "this response wins") is the reward."""

    method = "clf-lgb"

    def __init__(self, booster, input_dim: int):
        self.booster = booster
        self.input_dim = int(input_dim)

    def score(self, embeddings: np.ndarray) -> np.ndarray:
        embeddings = _check_matrix(embeddings, "embeddings", self.input_dim)
        return np.asarray(self.booster.predict(embeddings, raw_score=True), dtype=np.float64)

    def config(self) -> dict:
        return {"kind": "lgb", "method": self.method, "input_dim": self.input_dim}


class EnsembleRewardModel:
    """Mean of the members' rewards after standardising each member on its own training scores,
    so that members with different scales (a BT logit vs a LightGBM log-odds) weigh alike."""

    method = "ensemble"

    def __init__(
        self, members: Sequence, offsets: Sequence[float] | None = None, scales: Sequence[float] | None = None
    ):
        if not members:
            raise InputError("EnsembleRewardModel: no members")
        dims = {m.input_dim for m in members}
        if len(dims) != 1:
            raise InputError(f"EnsembleRewardModel: members expect different input sizes {sorted(dims)}")
        self.members = list(members)
        self.input_dim = dims.pop()
        self.offsets = [0.0] * len(members) if offsets is None else [float(o) for o in offsets]
        self.scales = [1.0] * len(members) if scales is None else [float(s) for s in scales]

    def calibrate(self, embeddings: np.ndarray) -> EnsembleRewardModel:
        """Set each member's offset and scale from its scores on ``embeddings`` (e.g. the training set)."""
        self.offsets, self.scales = [], []
        for member in self.members:
            s = member.score(embeddings)
            self.offsets.append(float(s.mean()))
            self.scales.append(float(s.std()) or 1.0)
        return self

    def score(self, embeddings: np.ndarray) -> np.ndarray:
        total = np.zeros(len(embeddings), dtype=np.float64)
        for member, offset, scale in zip(self.members, self.offsets, self.scales):
            total += (member.score(embeddings) - offset) / scale
        return total / len(self.members)

    def config(self) -> dict:
        return {
            "kind": "ensemble",
            "method": self.method,
            "input_dim": self.input_dim,
            "offsets": self.offsets,
            "scales": self.scales,
            "members": [m.method for m in self.members],
        }


# ---------------------------------------------------------------- input checks and pair → label


def _check_matrix(x: np.ndarray, name: str, dim: int | None = None) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 2:
        raise InputError(f"{name}: expected a 2-d array (n, d), got shape {x.shape}")
    if dim is not None and x.shape[1] != dim:
        raise InputError(
            f"{name}: the model expects {dim}-d embeddings, got {x.shape[1]}-d "
            "(embedded with another backbone or layer?)"
        )
    return x


def _check_pairs(emb_first: np.ndarray, emb_second: np.ndarray, first_wins: np.ndarray):
    emb_first = _check_matrix(emb_first, "emb_first")
    emb_second = _check_matrix(emb_second, "emb_second", emb_first.shape[1])
    first_wins = np.asarray(first_wins).astype(bool).reshape(-1)
    if not (len(emb_first) == len(emb_second) == len(first_wins)):
        raise InputError(
            f"pairs: emb_first has {len(emb_first)} rows, emb_second {len(emb_second)}, "
            f"first_wins {len(first_wins)}; they must match"
        )
    if len(first_wins) < 2:
        raise InputError(f"pairs: need at least 2 annotated pairs to fit, got {len(first_wins)}")
    return emb_first, emb_second, first_wins


def pairs_to_pointwise(emb_first: np.ndarray, emb_second: np.ndarray, first_wins: np.ndarray):
    """Each response of a pair becomes one classification row: label 1 if it won, 0 if it lost
    (section 4: the classifier predicts P(win) of a response on its own)."""
    emb_first, emb_second, first_wins = _check_pairs(emb_first, emb_second, first_wins)
    embeddings = np.concatenate([emb_first, emb_second], axis=0)
    labels = np.concatenate([first_wins, ~first_wins]).astype(np.float32)
    return embeddings, labels


def _split_indices(n: int, val_fraction: float, rng: np.random.Generator):
    if not 0.0 <= val_fraction < 1.0:
        raise InputError(f"val_fraction must be in [0, 1), got {val_fraction}")
    order = rng.permutation(n)
    n_val = int(round(n * val_fraction))
    if n - n_val < 1:
        n_val = n - 1
    return order[n_val:], order[:n_val]


def _batch(x: np.ndarray, index: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x[index], dtype=np.float32))


# ---------------------------------------------------------------- MLP training


@dataclass(frozen=True)
class MLPSettings:
    """What BT-MLP and CLF-MLP share: the network's hidden sizes and the optimisation. Each field is
    also a keyword argument of ``fit_bt_mlp`` and ``fit_clf_mlp``."""

    hidden: Sequence[int] = DEFAULT_HIDDEN
    lr: float = 1e-3
    max_epochs: int = 30
    patience: int = 3
    val_fraction: float = 0.2  # held out for early stopping
    batch_size: int = DEFAULT_BATCH_SIZE
    seed: int = 0
    bf16: bool = False  # bfloat16 autocast (opt-in, faster on CPUs with AVX512-BF16)

    @classmethod
    def from_keywords(cls, caller: str, keywords: dict) -> MLPSettings:
        unknown = sorted(set(keywords) - set(cls.__dataclass_fields__))
        if unknown:
            raise TypeError(f"{caller}: unknown setting(s) {unknown}; choose from {list(cls.__dataclass_fields__)}")
        return cls(**keywords)


def _train_mlp(
    model: MLPRewardModel,
    n_items: int,
    batch_loss: Callable[[MLPRewardModel, np.ndarray], torch.Tensor],
    training: MLPSettings,
    description: str,
) -> MLPRewardModel:
    """The loop shared by BT-MLP and CLF-MLP: Adam, shuffled mini-batches, early stopping on a
    held-out split with ``patience`` epochs, best weights restored. ``batch_loss(model, idx)`` is
    the mean loss of the items ``idx``; it must return an fp32 loss (``.float()`` under autocast).
    Torch's global RNG is seeded with ``training.seed`` inside a fork, so the caller's stream is untouched."""
    from tqdm.auto import tqdm

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(training.seed)
        if training.batch_size < 1 or training.max_epochs < 1 or training.patience < 1:
            raise InputError(
                f"{description}: batch_size, max_epochs and patience must be ≥ 1 "
                f"(got {training.batch_size}, {training.max_epochs}, {training.patience})"
            )
        rng = np.random.default_rng(training.seed)
        train_idx, val_idx = _split_indices(n_items, training.val_fraction, rng)
        optimizer = torch.optim.Adam(model.parameters(), lr=training.lr)
        history = FitHistory()
        best_state, best_val, bad_epochs = None, math.inf, 0
        start = time.perf_counter()
        progress = tqdm(range(training.max_epochs), desc=description, leave=False, disable=None)
        for epoch in progress:
            model.train()
            order = rng.permutation(train_idx)
            total, count = 0.0, 0
            for lo in range(0, len(order), training.batch_size):
                idx = order[lo : lo + training.batch_size]
                # bf16 autocast (opt-in): about 2x faster training on CPUs with AVX512-BF16/AMX;
                # weights, Adam state, validation and scoring stay fp32.
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=training.bf16):
                    loss = batch_loss(model, idx)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total += loss.item() * len(idx)
                count += len(idx)
            history.train_loss.append(total / max(count, 1))
            if len(val_idx) == 0:  # too few items to hold any out: train for max_epochs
                history.best_epoch = epoch
                continue
            model.eval()
            with torch.no_grad():
                val = sum(
                    float(batch_loss(model, val_idx[lo : lo + 8192])) * len(val_idx[lo : lo + 8192])
                    for lo in range(0, len(val_idx), 8192)
                ) / len(val_idx)
            history.val_loss.append(val)
            progress.set_postfix(train=f"{history.train_loss[-1]:.4f}", val=f"{val:.4f}")
            if val < best_val - 1e-6:
                best_val, bad_epochs, history.best_epoch = val, 0, epoch
                best_state = copy.deepcopy(model.state_dict())
            else:
                bad_epochs += 1
                if bad_epochs >= training.patience:
                    history.stopped_early = True
                    break
        if best_state is not None:
            model.load_state_dict(best_state)
        model.eval()
        history.seconds = time.perf_counter() - start
        model.history = history
        return model


def _new_mlp(
    input_dim: int,
    settings: MLPSettings,
    method: str,
    init: MLPRewardModel | None,
    train_embeddings: Callable[[], np.ndarray],
) -> MLPRewardModel:
    if init is not None:
        if init.input_dim != input_dim:
            raise InputError(f"init: the warm-start model expects {init.input_dim}-d inputs, the data is {input_dim}-d")
        model = copy.deepcopy(init)
        model.method = method
        return model  # keeps the warm-start's standardisation, so its features stay comparable
    with torch.random.fork_rng(devices=[]):  # seeded init without touching the caller's global RNG
        torch.manual_seed(settings.seed)
        model = MLPRewardModel(input_dim, settings.hidden, method=method)
    model.set_standardization(train_embeddings(), seed=settings.seed)
    return model


def fit_bt_mlp(
    emb_first: np.ndarray,
    emb_second: np.ndarray,
    first_wins: np.ndarray,
    *,
    init: MLPRewardModel | None = None,
    **settings,
) -> MLPRewardModel:
    """BT-MLP: the Siamese MLP trained with L = −mean log σ(s · (f(e₁) − f(e₂))).

    emb_first, emb_second: (n, d) embeddings of the two responses of each pair.
    first_wins: (n,) bool, the (noisy) annotation. init: a model to warm-start from (copied).
    settings: any field of ``MLPSettings`` (hidden, lr, max_epochs, patience, val_fraction, batch_size,
    seed, bf16). The held-out 20 % are pairs; early stopping watches their BT loss.
    """
    training = MLPSettings.from_keywords("fit_bt_mlp", settings)
    emb_first, emb_second, first_wins = _check_pairs(emb_first, emb_second, first_wins)
    sign = torch.from_numpy(np.where(first_wins, 1.0, -1.0).astype(np.float32))
    model = _new_mlp(
        emb_first.shape[1], training, "bt-mlp", init, lambda: np.concatenate([emb_first[:10000], emb_second[:10000]])
    )

    def batch_loss(net: MLPRewardModel, idx: np.ndarray) -> torch.Tensor:
        # One forward over both sides: the two towers share weights (Siamese).
        rewards = net(torch.cat([_batch(emb_first, idx), _batch(emb_second, idx)]))
        rewards = rewards.float()
        margin = rewards[: len(idx)] - rewards[len(idx) :]
        return -F.logsigmoid(sign[idx] * margin).mean()

    return _train_mlp(model, len(first_wins), batch_loss, training, "BT-MLP")


def fit_clf_mlp(
    embeddings: np.ndarray, labels: np.ndarray, *, init: MLPRewardModel | None = None, **settings
) -> MLPRewardModel:
    """CLF-MLP: the same network trained with BCE(σ(f(e)), y) on single responses; the logit f is the
    reward. embeddings (n, d); labels (n,) in {0, 1} (1 = this response won its comparison).
    settings: any field of ``MLPSettings``, as for ``fit_bt_mlp``."""
    training = MLPSettings.from_keywords("fit_clf_mlp", settings)
    embeddings = _check_matrix(embeddings, "embeddings")
    labels = np.asarray(labels, dtype=np.float32).reshape(-1)
    if len(labels) != len(embeddings):
        raise InputError(f"fit_clf_mlp: {len(embeddings)} embeddings but {len(labels)} labels")
    if len(labels) < 2:
        raise InputError("fit_clf_mlp: need at least 2 labelled responses")
    targets = torch.from_numpy(labels)
    model = _new_mlp(embeddings.shape[1], training, "clf-mlp", init, lambda: embeddings[:20000])

    def batch_loss(net: MLPRewardModel, idx: np.ndarray) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(net(_batch(embeddings, idx)).float(), targets[idx])

    return _train_mlp(model, len(labels), batch_loss, training, "CLF-MLP")


def _as_dense_csc(x: np.ndarray):
    """The dense matrix ``x`` as a scipy CSC matrix that stores every entry (zeros included).

    Why: LightGBM bins a numpy matrix row by row, and with thousands of features each row walks
    every feature's bin boundaries (2,048 × 255 doubles, 4 MB: more than a core's L2), so the
    binary searches miss the cache. From CSC it samples and bins one column at a time, in
    parallel over columns, with one feature's boundaries in L1. The Dataset, and so the model,
    is the same (tests/test_embedding_models.py checks the trees are identical); on 80,000 ×
    2,048 float32 rows it builds in about half the time. Costs a column-major copy of the data
    plus int32 row indices (8 bytes per entry) while the Dataset is built.
    """
    import scipy.sparse as sp

    n_rows, n_cols = x.shape
    values = np.ascontiguousarray(x.T, dtype=np.float32).reshape(-1)  # column after column
    row_indices = np.tile(np.arange(n_rows, dtype=np.int32), n_cols)
    column_starts = np.arange(0, n_rows * n_cols + 1, n_rows, dtype=np.int64)
    return sp.csc_matrix((values, row_indices, column_starts), shape=(n_rows, n_cols), copy=False)


def fit_clf_lgb(
    embeddings: np.ndarray, labels: np.ndarray, *, seed: int = 0, num_threads: int = 0, params: dict | None = None
) -> LGBRewardModel:
    """CLF-LGB: ``lightgbm.train({"objective": "binary"}, …)`` with default parameters (appendix D.6:
    objective binary, metric binary_logloss) on single responses; the raw log-odds is the reward.
    ``num_threads`` 0 lets LightGBM choose (OpenMP default); ``params`` overrides for experiments.

    Two settings change how LightGBM computes, not what it computes (same trees as
    ``lgb.train(params, lgb.Dataset(embeddings))`` where LightGBM's own trial picks col-wise):
    the Dataset is built from a column-major copy (see ``_as_dense_csc``), and histograms are
    built column-wise (``force_col_wise``) instead of LightGBM timing both layouts first; on
    dense 2,048-d embeddings row-wise is 2.4× slower (bench/embedding_fit.py, docs/lightweight.md).
    Pass ``params={"force_row_wise": True}`` to override.
    """
    import lightgbm as lgb  # a dependency, imported lazily: only CLF-LGB needs it

    embeddings = _check_matrix(embeddings, "embeddings")
    labels = np.asarray(labels, dtype=np.float32).reshape(-1)
    if len(labels) != len(embeddings):
        raise InputError(f"fit_clf_lgb: {len(embeddings)} embeddings but {len(labels)} labels")
    if labels.min() == labels.max():
        raise InputError("fit_clf_lgb: every label is the same; a classifier needs winners and losers")
    params = dict(params or {})
    config = {
        "objective": "binary",
        "metric": "binary_logloss",
        "seed": seed,
        "verbosity": -1,
        "num_threads": num_threads,
    }
    if not params.get("force_row_wise"):
        config["force_col_wise"] = True
    config.update(params)
    data = lgb.Dataset(_as_dense_csc(embeddings), label=labels, params=config, free_raw_data=True)
    # Binned here, not inside lgb.train: measured 58.1-58.5 s against 59.1-60.7 s at 80,000 x 2,048
    # (bench/embedding_fit.py); free_raw_data drops the column-major copy once it is binned.
    data.construct()
    booster = lgb.train(config, data)  # default num_boost_round=100, as the paper's defaults
    return LGBRewardModel(booster, embeddings.shape[1])


def fit_reward_model(
    method: str, emb_first: np.ndarray, emb_second: np.ndarray, first_wins: np.ndarray, *, seed: int = 0, **kwargs
):
    """Fit ``method`` (bt-mlp, clf-mlp, clf-lgb) on annotated pairs; classifiers see each response
    of a pair as its own row (winner 1, loser 0). Extra keyword arguments go to the fitter."""
    if method == "bt-mlp":
        return fit_bt_mlp(emb_first, emb_second, first_wins, seed=seed, **kwargs)
    embeddings, labels = pairs_to_pointwise(emb_first, emb_second, first_wins)
    if method == "clf-mlp":
        return fit_clf_mlp(embeddings, labels, seed=seed, **kwargs)
    if method == "clf-lgb":
        return fit_clf_lgb(embeddings, labels, seed=seed, **kwargs)
    raise InputError(f"unknown method {method!r}; choose one of {', '.join(METHOD_NAMES)}")


def fit_ensemble(
    methods: Sequence[str],
    emb_first: np.ndarray,
    emb_second: np.ndarray,
    first_wins: np.ndarray,
    *,
    seeds: Sequence[int] = (0,),
    mlp_kwargs: dict | None = None,
    lgb_kwargs: dict | None = None,
) -> EnsembleRewardModel:
    """One member per (method, seed), averaged after per-member standardisation on the training
    responses. ``mlp_kwargs`` go to the MLP fitters, ``lgb_kwargs`` to LightGBM."""
    members = [
        fit_reward_model(
            m,
            emb_first,
            emb_second,
            first_wins,
            seed=s,
            **((lgb_kwargs or {}) if m == "clf-lgb" else (mlp_kwargs or {})),
        )
        for m in methods
        for s in seeds
    ]
    ensemble = EnsembleRewardModel(members)
    return ensemble.calibrate(np.concatenate([emb_first[:10000], emb_second[:10000]]))


# ---------------------------------------------------------------- save / load (no pickle)


def save_model(model, folder: str | Path) -> Path:
    """Write ``model`` to ``folder``: config.json plus model.safetensors (MLP), model.txt (LightGBM)
    or member_<i>/ sub-folders (ensemble). The folder is assembled beside ``folder`` and moved into
    place whole, replacing what was there (callers clear it first with ``hsrm.files.check_output``)."""
    from ..files import staged_folder

    with staged_folder(folder) as staging:
        _write_model(model, staging)
    return Path(folder)


def _write_model(model, folder: Path) -> None:
    from safetensors.torch import save

    from ..files import atomic_write, atomic_write_json, atomic_write_text

    folder.mkdir(parents=True, exist_ok=True)
    config = model.config()
    if isinstance(model, MLPRewardModel):
        state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
        atomic_write(folder / "model.safetensors", lambda handle: handle.write(save(state)), binary=True)
        if getattr(model, "history", None) is not None:
            config["history"] = model.history.to_dict()
    elif isinstance(model, LGBRewardModel):
        atomic_write_text(folder / "model.txt", model.booster.model_to_string())
    elif isinstance(model, EnsembleRewardModel):
        for i, member in enumerate(model.members):
            _write_model(member, folder / f"member_{i}")
    else:
        raise InputError(f"save_model: cannot save a {type(model).__name__}")
    atomic_write_json(folder / "config.json", config)  # last: a folder without it is no model


def load_model(folder: str | Path):
    """Read a folder written by :func:`save_model`; the result's ``score`` gives the same rewards."""
    folder = Path(folder)
    config_path = folder / "config.json"
    if not config_path.exists():
        raise MissingFileError(f"{folder} has no config.json: not a model saved by `hsrm fit`")
    config = json.loads(config_path.read_text())
    kind = config.get("kind")
    if kind == "mlp":
        from safetensors.torch import load_file

        model = MLPRewardModel(config["input_dim"], tuple(config["hidden"]), method=config.get("method", "bt-mlp"))
        model.load_state_dict(load_file(str(folder / "model.safetensors")))
        model.eval()
        return model
    if kind == "lgb":
        import lightgbm as lgb

        return LGBRewardModel(lgb.Booster(model_file=str(folder / "model.txt")), config["input_dim"])
    if kind == "ensemble":
        members = [load_model(folder / f"member_{i}") for i in range(len(config["members"]))]
        return EnsembleRewardModel(members, config["offsets"], config["scales"])
    raise InputError(f"{config_path}: unknown model kind {kind!r} (expected mlp, lgb or ensemble)")
