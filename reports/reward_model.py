"""The doubly robust estimator's reward model q̂(x, a): a cross-fitted ridge regression on
one-hot context × action features, in numpy/scipy.

Why this shape. DR is unbiased whatever q̂ is (the propensities are logged exactly); q̂ only
buys variance, and only as much as it predicts the reward of *this* page view under *that*
variant. A per-variant mean ignores the context, so where the best copy depends on the shopper
DR was no better than SNIPS. Features, per (decision, action):

    a:<variant>  g:<group>  t:<key=value>  a:<variant>|t:<key=value>  g:<group>|t:<key=value>

(`group` is the variant's style: it lets products share what a style does on a device). Ridge
with penalty λ = `PENALTY` on centred rewards acts like `PENALTY` pseudo-observations per
one-hot effect, so a variant or cell seen a few times is shrunk toward the rest.

Cross-fitting (Chernozhukov et al., "Double/debiased machine learning", Econometrics J. 2018;
for off-policy evaluation, Kallus & Uehara 2020): the sample is split into `FOLDS` folds by a
seeded permutation; each fold's q̂ comes from the model fitted on the other folds. A model
scored on the rewards it was fitted to would leak them into DR's correction term and make its
interval too narrow.

Solved with `scipy.sparse.linalg.lsqr` (damped least squares): the design is sparse (a few
dozen nonzeros per row) and its width (variants × context values) can reach tens of thousands.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from scipy import sparse
from scipy.sparse.linalg import lsqr

PENALTY = 10.0
FOLDS = 5
SEED = 0
DESCRIPTION = (
    f"ridge regression (penalty {PENALTY:g}) on one-hot variant, style and context features "
    f"and their interactions, cross-fitted over {FOLDS} folds (each decision's prediction "
    "comes from a model fitted without it)"
)


def context_tokens(context: Mapping[str, object] | None) -> tuple[str, ...]:
    """A context as sorted `key=value` tokens (values as text; None dropped).

    >>> context_tokens({"segment": "new", "device": "mobile", "x": None})
    ('device=mobile', 'segment=new')
    """
    return tuple(sorted(f"{k}={v}" for k, v in (context or {}).items() if v is not None))


class Design:
    """The one-hot design of every (decision, action) pair of a sample, built once.

    `pairs(rows, cols)` gives the sparse rows of the pairs (rows[j], cols[j]) where `cols`
    indexes each decision's own action list.
    """

    def __init__(
        self,
        contexts: Sequence[tuple[str, ...]],
        actions: Sequence[Sequence[str]],
        groups: Mapping[str, str] | None = None,
    ) -> None:
        groups = groups or {}
        k = max((len(a) for a in actions), default=1)
        t_max = max((len(c) for c in contexts), default=0)
        token_ids: dict[str, int] = {}
        action_ids: dict[str, int] = {}
        group_ids: dict[str, int] = {}
        # Samples repeat their contexts and action sets: each distinct one is numbered once,
        # in first-seen order (so ids, hence columns, are those a row-by-row pass would give),
        # and the (n, ·) arrays are gathered from the distinct ones' rows.
        seen_ctx: dict[tuple[str, ...], int] = {}
        seen_acts: dict[tuple[str, ...], int] = {}
        ctx_rows: list[list[int]] = []
        act_rows: list[tuple[list[int], list[int]]] = []
        ctx_of, acts_of = [], []
        for ctx, acts in zip(contexts, actions, strict=True):
            c = seen_ctx.get(ctx)
            if c is None:
                c = seen_ctx[ctx] = len(ctx_rows)
                ctx_rows.append([token_ids.setdefault(tk, len(token_ids)) for tk in ctx])
            key = tuple(acts)
            a = seen_acts.get(key)
            if a is None:
                a = seen_acts[key] = len(act_rows)
                ids, gids = [], []
                for action in key:
                    ids.append(action_ids.setdefault(action, len(action_ids)))
                    gids.append(group_ids.setdefault(groups.get(action, ""), len(group_ids)))
                act_rows.append((ids, gids))
            ctx_of.append(c)
            acts_of.append(a)
        tok_d = np.full((len(ctx_rows), max(t_max, 1)), -1, dtype=np.int64)
        for c, ids in enumerate(ctx_rows):
            tok_d[c, : len(ids)] = ids
        act_d = np.full((len(act_rows), k), -1, dtype=np.int64)
        grp_d = np.full((len(act_rows), k), -1, dtype=np.int64)
        for a, (ids, gids) in enumerate(act_rows):
            act_d[a, : len(ids)] = ids
            grp_d[a, : len(gids)] = gids
        ctx_idx = np.asarray(ctx_of, dtype=np.int64)
        acts_idx = np.asarray(acts_of, dtype=np.int64)
        tok, act, grp = tok_d[ctx_idx], act_d[acts_idx], grp_d[acts_idx]
        self.n_tokens = max(len(token_ids), 1)
        self.n_actions = max(len(action_ids), 1)
        self.n_groups = max(len(group_ids), 1)
        self.tok, self.act, self.grp = tok, act, grp
        t, a, g = self.n_tokens, self.n_actions, self.n_groups
        self.width = a + g + t + a * t + g * t

    def pairs(self, rows: np.ndarray, cols: np.ndarray) -> sparse.csr_matrix:
        """Sparse design rows (len(rows), width) of the pairs (rows[j], cols[j])."""
        t, a, g = self.n_tokens, self.n_actions, self.n_groups
        act = self.act[rows, cols][:, None]
        grp = self.grp[rows, cols][:, None]
        tok = self.tok[rows]  # (m, t_max), −1 where a decision has fewer tokens
        has = tok >= 0
        tok_c = np.where(has, tok, 0)
        blocks = [
            (act, np.ones_like(act, dtype=bool)),
            (a + grp, np.ones_like(grp, dtype=bool)),
            (a + g + tok_c, has),
            (a + g + t + act * t + tok_c, has),
            (a + g + t + a * t + grp * t + tok_c, has),
        ]
        cols_all = np.concatenate([b for b, _ in blocks], axis=1)
        mask = np.concatenate([np.broadcast_to(m, b.shape) for b, m in blocks], axis=1)
        m = len(rows)
        row_idx = np.broadcast_to(np.arange(m)[:, None], cols_all.shape)
        return sparse.csr_matrix(
            (np.ones(int(mask.sum())), (row_idx[mask], cols_all[mask])), shape=(m, self.width)
        )


def fit_predict(
    design: Design,
    train_rows: np.ndarray,
    train_cols: np.ndarray,
    rewards: np.ndarray,
    pred_rows: np.ndarray,
    pred_cols: np.ndarray,
) -> np.ndarray:
    """Fit ridge on the pairs (train_rows, train_cols) with `rewards` (m, M) and predict the
    pairs (pred_rows, pred_cols): (len(pred_rows), M), clipped at 0 (rewards are ≥ 0)."""
    x_train = design.pairs(train_rows, train_cols)
    x_pred = design.pairs(pred_rows, pred_cols)
    out = np.empty((len(pred_rows), rewards.shape[1]))
    damp = float(np.sqrt(PENALTY))
    for m in range(rewards.shape[1]):
        y = rewards[:, m]
        mean = float(y.mean()) if y.size else 0.0
        if y.size == 0 or np.all(y == mean):
            out[:, m] = mean
            continue
        beta = lsqr(x_train, y - mean, damp=damp, atol=1e-6, btol=1e-6, iter_lim=200)[0]
        out[:, m] = mean + x_pred @ beta
    clipped: np.ndarray = np.maximum(out, 0.0)
    return clipped


def cross_fitted_q(
    design: Design,
    chosen: np.ndarray,
    mask: np.ndarray,
    rewards: np.ndarray,
    folds: int = FOLDS,
    seed: int = SEED,
) -> np.ndarray:
    """q̂ at every action of every decision, (n, K, M): each decision's row from the model
    fitted on the other folds. `chosen` (n,) served index, `mask` (n, K) real actions,
    `rewards` (n, M). With fewer than 2·folds decisions there is nothing to split: one model
    is fitted on all of them (its DR interval is meaningless at that size anyway)."""
    n, k = mask.shape
    q = np.zeros((n, k, rewards.shape[1]))
    if n == 0:
        return q
    fold = np.random.default_rng(seed).permutation(n) % folds if n >= 2 * folds else None
    for f in range(folds if fold is not None else 1):
        held = np.flatnonzero(fold == f) if fold is not None else np.arange(n)
        train = np.flatnonzero(fold != f) if fold is not None else np.arange(n)
        rows, cols = np.nonzero(mask[held])
        rows = held[rows]
        q[rows, cols] = fit_predict(design, train, chosen[train], rewards[train], rows, cols)
    return q
