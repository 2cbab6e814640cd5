"""Embedding drift: can the served model's recent inputs be told apart from what it was trained on?

Two tests on the penultimate-layer embeddings, the reference (the bundle's reference.npz) against one production
window, both on the same PCA projection (fitted on the pooled rows, `n_components` components):

  domain classifier   a logistic regression asked "reference or production?", scored by cross-validated ROC-AUC
                      (stratified folds, balanced classes): 0.5 means indistinguishable, 1.0 means every image is
                      recognisably new. This is Evidently's default for embedding drift ("model" method), whose
                      AUC is also the easiest figure to explain to a person.
  MMD                 the maximum mean discrepancy with an RBF kernel (bandwidth: the median pairwise distance,
                      the median heuristic of Gretton et al. 2012), unbiased estimate, with a permutation p-value
                      (the same kernel matrix, the labels shuffled `n_permutations` times).

Drift is declared when BOTH say so: AUC > auc_threshold (a practical size) AND p < p_threshold (not chance). The
classifier alone can flag a trivial but consistent difference; the p-value alone becomes significant for any
difference once windows are large. Under no shift both fire rarely; tests/monitor/test_drift.py bounds the false
alarm rate over 20 seeded windows.

numpy and scikit-learn only: Evidently would give the same two numbers but pulls in a heavy dependency tree
(pandas, plotly, nltk, a pydantic pin, its own web UI) into a served product that needs ~60 lines of it.
Everything is seeded (subsampling, folds, permutations), so one check gives the same answer twice.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np

from core.errors import StudioError

DRIFT, NO_DRIFT, NOT_ENOUGH = "drift", "no drift", "not enough data"


class DriftError(StudioError, ValueError):
    """Embeddings that cannot be compared (different dimensions, not a 2-D array)."""


@dataclass(frozen=True)
class DriftConfig:
    auc_threshold: float = 0.75  # domain classifier ROC-AUC above this: a difference of practical size
    p_threshold: float = 0.01  # MMD permutation p-value below this: not chance
    n_components: int = 32  # PCA components the tests run on
    max_rows: int = 500  # rows per side at most (seeded subsample): bounds the time of a check
    min_rows: int = 30  # fewer production (or reference) rows than this: "not enough data"
    n_permutations: int = 500  # MMD permutations (the smallest p-value is 1 / (n + 1))
    cv_folds: int = 5  # domain classifier's cross-validation folds
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0.5 <= self.auc_threshold < 1.0:
            raise DriftError(f"auc_threshold must be in [0.5, 1), got {self.auc_threshold}")
        if not 0.0 < self.p_threshold < 1.0:
            raise DriftError(f"p_threshold must be in (0, 1), got {self.p_threshold}")
        if self.min_rows < max(2, self.cv_folds) or self.max_rows < self.min_rows:
            raise DriftError(f"need cv_folds <= min_rows <= max_rows, got {self.cv_folds}, {self.min_rows}, "
                             f"{self.max_rows}")
        if self.n_components < 1 or self.n_permutations < 1:
            raise DriftError("n_components and n_permutations must be at least 1")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class DriftResult:
    status: str  # DRIFT, NO_DRIFT or NOT_ENOUGH
    n_reference: int  # rows used (after subsampling)
    n_production: int
    auc: float | None = None  # cross-validated domain classifier ROC-AUC
    mmd2: float | None = None  # unbiased MMD^2 estimate (RBF, median heuristic)
    p_value: float | None = None  # permutation p-value of the MMD
    auc_threshold: float = 0.75
    p_threshold: float = 0.01
    n_production_needed: int = 30  # the config's min_rows

    @property
    def drifted(self) -> bool:
        return self.status == DRIFT

    def sentence(self) -> str:
        """One plain-English sentence on what was found."""
        if self.status == NOT_ENOUGH:
            return (f"not enough data to test drift: {self.n_production} production and {self.n_reference} "
                    f"reference images (at least {self.n_production_needed} of each are needed)")
        figures = (f"a classifier tells them from the training images with ROC-AUC {self.auc:.2f} (threshold "
                   f"{self.auc_threshold:.2f}; 0.5 = indistinguishable), MMD permutation p = {self.p_value:.3g} "
                   f"(threshold {self.p_threshold:g})")
        if self.drifted:
            return (f"the embeddings of {self.n_production} recent images have drifted from the training data: "
                    f"{figures}")
        return f"no drift in the embeddings of {self.n_production} recent images: {figures}"

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "drifted": self.drifted, "sentence": self.sentence()}


def detect_drift(reference: np.ndarray, production: np.ndarray, config: DriftConfig = DriftConfig()) -> DriftResult:
    """Compare production embeddings (n, dim) with the reference (m, dim); see the module docstring."""
    ref, prod = _as_matrix(reference, "reference"), _as_matrix(production, "production")
    if len(ref) and len(prod) and ref.shape[1] != prod.shape[1]:
        raise DriftError(f"production embeddings have {prod.shape[1]} values, the reference {ref.shape[1]}: a "
                         "different model architecture; export the served model again to get its reference")
    rng = np.random.default_rng(config.seed)
    ref, prod = _subsample(ref, config.max_rows, rng), _subsample(prod, config.max_rows, rng)
    base = dict(n_reference=len(ref), n_production=len(prod), auc_threshold=config.auc_threshold,
                p_threshold=config.p_threshold, n_production_needed=config.min_rows)
    if len(ref) < config.min_rows or len(prod) < config.min_rows:
        return DriftResult(NOT_ENOUGH, **base)
    from threadpoolctl import threadpool_limits  # scikit-learn's own dependency

    # one BLAS thread: these matrices are small (<= 1,000 rows), and on a busy 2-core server BLAS threads fighting
    # for the cores made one eigendecomposition take 5 s instead of 0.04 s
    with threadpool_limits(limits=1, user_api="blas"):
        x = _project(np.concatenate([ref, prod]), config.n_components)
        y = np.r_[np.zeros(len(ref), dtype=np.int64), np.ones(len(prod), dtype=np.int64)]
        auc = domain_classifier_auc(x, y, config.cv_folds, config.seed)
        mmd2, p = mmd_permutation_test(x, y, config.n_permutations, config.seed)
    drifted = auc > config.auc_threshold and p < config.p_threshold
    return DriftResult(DRIFT if drifted else NO_DRIFT, auc=auc, mmd2=mmd2, p_value=p, **base)


# ------------------------------------------------------------------------------------------------ parts
def domain_classifier_auc(x: np.ndarray, y: np.ndarray, folds: int = 5, seed: int = 0) -> float:
    """Cross-validated ROC-AUC of a logistic regression telling y=0 rows from y=1 rows (balanced weights)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    folds = int(min(folds, np.bincount(y).min()))
    model = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, class_weight="balanced", max_iter=2000))
    cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    scores = cross_val_predict(model, x, y, cv=cv, method="decision_function")
    return float(roc_auc_score(y, scores))


def mmd_permutation_test(x: np.ndarray, y: np.ndarray, n_permutations: int = 500, seed: int = 0
                         ) -> tuple[float, float]:
    """Unbiased MMD^2 between the y=0 and y=1 rows of x (RBF kernel, median heuristic) and its permutation
    p-value, (1 + #{permuted >= observed}) / (1 + n_permutations)."""
    sq = _sq_distances(x)
    off_diag = sq[np.triu_indices(len(x), k=1)]
    median = float(np.median(off_diag[off_diag > 0])) if np.any(off_diag > 0) else 1.0
    kernel = np.exp(-sq / median)  # exp(-d^2 / (2 sigma^2)) with 2 sigma^2 = median squared distance
    rng = np.random.default_rng(seed)
    labels = np.stack([y] + [rng.permutation(y) for _ in range(n_permutations)], axis=1).astype(np.float64)
    stats = _mmd2_columns(kernel, labels)
    observed = float(stats[0])
    p = float((1 + np.sum(stats[1:] >= observed)) / (1 + n_permutations))
    return observed, p


def _mmd2_columns(kernel: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Unbiased MMD^2 for each column of 0/1 labels (1 = production), all from one kernel matrix."""
    b = labels
    a = 1.0 - b
    m, n = a.sum(axis=0), b.sum(axis=0)
    ka, kb = kernel @ a, kernel @ b
    diag = np.diag(kernel)
    aa = (np.einsum("ij,ij->j", a, ka) - diag @ a) / (m * (m - 1))
    bb = (np.einsum("ij,ij->j", b, kb) - diag @ b) / (n * (n - 1))
    ab = np.einsum("ij,ij->j", a, kb) / (m * n)
    return aa + bb - 2 * ab


def _sq_distances(x: np.ndarray) -> np.ndarray:
    norms = np.einsum("ij,ij->i", x, x)
    return np.maximum(norms[:, None] + norms[None, :] - 2 * x @ x.T, 0.0)


def _project(x: np.ndarray, n_components: int) -> np.ndarray:
    """The rows' scores on their first principal components (PCA of the pooled rows), by an eigendecomposition of
    the smaller of the Gram (rows x rows) and covariance (values x values) matrices: exact, deterministic up to each
    component's sign (which neither test sees), and ~0.04 s for 620 x 1,280 where a full SVD took seconds."""
    x = x - x.mean(axis=0)
    k = int(min(n_components, x.shape[1], len(x) - 1))
    if k < 1:
        return x
    from scipy.linalg import eigh

    gram = len(x) <= x.shape[1]
    m = x @ x.T if gram else x.T @ x
    values, vectors = eigh(m, subset_by_index=[len(m) - k, len(m) - 1])  # the k largest, ascending
    values, vectors = values[::-1], vectors[:, ::-1]
    return vectors * np.sqrt(np.maximum(values, 0.0)) if gram else x @ vectors


def _subsample(x: np.ndarray, max_rows: int, rng: np.random.Generator) -> np.ndarray:
    if len(x) <= max_rows:
        return x
    return x[np.sort(rng.choice(len(x), size=max_rows, replace=False))]


def _as_matrix(x: Any, what: str) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float64)
    if arr.size == 0:
        return np.zeros((0, arr.shape[1] if arr.ndim == 2 else 0))
    if arr.ndim != 2:
        raise DriftError(f"{what} embeddings must be a 2-D array (images x values), got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise DriftError(f"{what} embeddings contain NaN or infinite values")
    return arr
