"""Linear read-outs of frozen embeddings: the paper's evaluation protocol.

* :func:`linear_probe_accuracy` — logistic regression on train embeddings, accuracy on test
  embeddings (official FactorCL protocol: scikit-learn ``LogisticRegression``; 1000 LBFGS
  iterations here, not its 200, on standardised features, so the fit converges).
* :func:`latent_decoding_r2` — ridge regression from embeddings to known latents, R² on test:
  how much of a latent block (shared, unique) an embedding holds, the question behind the
  paper's Table 1 on synthetic data.

Both accept torch tensors or numpy arrays and fit only on the train arguments.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

import numpy as np
import torch

__all__ = ["linear_probe_accuracy", "latent_decoding_r2"]

logger = logging.getLogger(__name__)


def _to_numpy(name: str, values: Any) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu()
        # numpy has no bfloat16; half precision loses too much for a fit anyway.
        if values.is_floating_point():
            values = values.float()
        return values.numpy()
    try:
        return np.asarray(values)
    except Exception as error:  # ragged lists and the like
        raise ValueError(f"`{name}` must be an array-like of numbers, got {type(values).__name__}") from error


def _check_matrix(name: str, values: Any, num_columns: int | None = None) -> np.ndarray:
    array = _to_numpy(name, values)
    if array.ndim != 2:
        raise ValueError(f"`{name}` must have shape [num_samples, num_features], got shape {array.shape}")
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(f"`{name}` must have at least one sample and one feature, got shape {array.shape}")
    if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
        raise ValueError(f"`{name}` must hold real numbers, got dtype {array.dtype}")
    if not np.isfinite(array).all():
        raise ValueError(f"`{name}` contains NaN or infinite values")
    if num_columns is not None and array.shape[1] != num_columns:
        raise ValueError(
            f"`{name}` has {array.shape[1]} features but the train features have {num_columns}: "
            "train and test must come from the same embedding"
        )
    return array


def _check_labels(name: str, values: Any, num_samples: int) -> np.ndarray:
    array = _to_numpy(name, values)
    if array.ndim != 1:
        raise ValueError(f"`{name}` must be a 1-D array of class labels, got shape {array.shape}")
    if not (np.issubdtype(array.dtype, np.integer) or array.dtype == np.bool_):
        raise ValueError(f"`{name}` must hold integer class labels, got dtype {array.dtype}")
    if array.shape[0] != num_samples:
        raise ValueError(f"`{name}` has {array.shape[0]} labels but the matching features have {num_samples} rows")
    return array


def _check_targets(name: str, values: Any, num_samples: int, num_columns: int | None = None) -> np.ndarray:
    array = _to_numpy(name, values)
    if array.ndim == 1:
        array = array[:, None]
    if array.ndim != 2:
        raise ValueError(f"`{name}` must have shape [num_samples] or [num_samples, num_targets], got shape {array.shape}")
    array = _check_matrix(name, array)
    if array.shape[0] != num_samples:
        raise ValueError(f"`{name}` has {array.shape[0]} rows but the matching features have {num_samples}")
    if num_columns is not None and array.shape[1] != num_columns:
        raise ValueError(f"`{name}` has {array.shape[1]} targets but the train targets have {num_columns}")
    return array


def _maybe_standardized(model, standardize: bool):
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    # Scaling is fitted on the train split only (inside the pipeline), so no test statistics leak.
    return make_pipeline(StandardScaler(), model) if standardize else model


def linear_probe_accuracy(
    train_features: Any, train_labels: Any, test_features: Any, test_labels: Any, max_iter: int = 1000,
    standardize: bool = True,
) -> float:
    """Test accuracy in [0, 1] of a logistic-regression probe fitted on frozen train embeddings.

    Args:
        train_features: ``[n_train, d]`` embeddings (torch or numpy) the probe is fitted on.
        train_labels: ``[n_train]`` integer class labels; at least two classes.
        test_features: ``[n_test, d]`` embeddings the probe is scored on.
        test_labels: ``[n_test]`` integer class labels.
        max_iter: LBFGS iterations (the official protocol uses 200, which on some embeddings
            stops before convergence). Not converging is logged once (debug level), not
            warned per fit: accuracy is what is reported, and it has settled by then.
        standardize: z-score features with train statistics first; makes the fit well
            conditioned whatever the embedding scale (it does not change what is linearly
            decodable).
    """
    train_x = _check_matrix("train_features", train_features)
    train_y = _check_labels("train_labels", train_labels, train_x.shape[0])
    test_x = _check_matrix("test_features", test_features, num_columns=train_x.shape[1])
    test_y = _check_labels("test_labels", test_labels, test_x.shape[0])
    if np.unique(train_y).size < 2:
        raise ValueError("`train_labels` must contain at least two classes to fit a probe")
    if not isinstance(max_iter, int) or max_iter < 1:
        raise ValueError(f"`max_iter` must be a positive integer, got {max_iter!r}")

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    probe = _maybe_standardized(LogisticRegression(max_iter=max_iter), standardize)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        probe.fit(train_x, train_y)
    for warning in caught:
        if issubclass(warning.category, ConvergenceWarning):
            logger.debug("linear probe: LBFGS stopped at max_iter=%d before converging", max_iter)
        else:
            warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
    return float(probe.score(test_x, test_y))


def latent_decoding_r2(
    train_features: Any, train_targets: Any, test_features: Any, test_targets: Any, alpha: float = 1.0,
    standardize: bool = True,
) -> float:
    """Test R² of a ridge regression from frozen embeddings to continuous targets (e.g. latents).

    Near 1: the embedding holds the targets linearly; near 0 (or below): it holds nothing
    linearly decodable about them. With several target columns the R² is averaged uniformly
    over columns, so each latent coordinate counts equally.

    Args:
        train_features: ``[n_train, d]`` embeddings the regression is fitted on (``n_train >= 2``).
        train_targets: ``[n_train]`` or ``[n_train, k]`` targets.
        test_features: ``[n_test, d]`` embeddings it is scored on (``n_test >= 2``).
        test_targets: ``[n_test]`` or ``[n_test, k]`` targets, same ``k``.
        alpha: ridge penalty; small relative to ``n_train`` after standardization.
        standardize: z-score features with train statistics first, so ``alpha`` means the
            same for any embedding scale.
    """
    train_x = _check_matrix("train_features", train_features)
    train_t = _check_targets("train_targets", train_targets, train_x.shape[0])
    test_x = _check_matrix("test_features", test_features, num_columns=train_x.shape[1])
    test_t = _check_targets("test_targets", test_targets, test_x.shape[0], num_columns=train_t.shape[1])
    # R² divides by the test targets' variance: undefined for one sample.
    if train_x.shape[0] < 2:
        raise ValueError(f"`train_features` must have at least 2 samples, got {train_x.shape[0]}")
    if test_x.shape[0] < 2:
        raise ValueError(f"`test_features` must have at least 2 samples, got {test_x.shape[0]}")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not np.isfinite(alpha) or alpha < 0:
        raise ValueError(f"`alpha` must be a finite number >= 0, got {alpha!r}")

    from sklearn.linear_model import Ridge

    regression = _maybe_standardized(Ridge(alpha=alpha), standardize)
    regression.fit(train_x, train_t)
    return float(regression.score(test_x, test_t))
