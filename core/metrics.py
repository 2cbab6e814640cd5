"""Classification metrics, computed one way everywhere (scikit-learn underneath)."""
from __future__ import annotations

import numpy as np
from sklearn.metrics import accuracy_score, precision_recall_fscore_support


def classification_metrics(y_true, y_pred, num_classes: int, prefix: str = "") -> dict[str, float]:
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    labels = list(range(num_classes))
    p, r, f, _ = precision_recall_fscore_support(y_true, y_pred, labels=labels, average="macro", zero_division=0)
    return {f"{prefix}accuracy": float(accuracy_score(y_true, y_pred)), f"{prefix}macro_precision": float(p),
            f"{prefix}macro_recall": float(r), f"{prefix}macro_f1": float(f)}
