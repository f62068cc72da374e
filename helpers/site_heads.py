"""A new site's few labels: patient-wise draws, the head refit anchored on training films, Platt and class mix.

The fitting pieces :func:`helpers.site.calibrate_site` assembles (notebook 08); the
result is applied at screening time by :mod:`helpers.serving.site`.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
from threadpoolctl import threadpool_limits

from helpers.imbalance import class_weights
from helpers.model import LOGIT_LAYER
from helpers.operating_point import logit, sigmoid
from helpers.serving import site as site_runtime


class LocalFilmsContradictModel(ValueError):
    """The labelled local films rank NORMAL above PNEUMONIA (Platt slope <= 0).

    Raised by :func:`fit_platt` (and so by :func:`calibrate_site`) only for that
    finding: the model cannot be calibrated for this site, and should not be used
    there. It is the one error :func:`run_protocol` counts as a refused draw (the
    site keeps the validation point); every other error is a fault and propagates.
    """


@contextmanager
def one_blas_thread():
    """Run the enclosed linear algebra on one BLAS thread (also as a decorator: ``@one_blas_thread()``).

    The fits here are small (thousands of rows, tens of columns) and there are thousands
    of them: several BLAS threads only wait on each other, and on a machine whose cores
    are busy (the network's own threads, other jobs) each product then takes 10-100x
    longer than on one thread. One thread changes no result beyond rounding.
    """
    with threadpool_limits(limits=1, user_api="blas"):
        yield


# --------------------------------------------------------------------------- #
# Draws by patient
# --------------------------------------------------------------------------- #
def draw_by_patient(labels, patient_ids, k: int, rng: np.random.Generator,
                    exclude_patients=()) -> tuple[np.ndarray, np.ndarray]:
    """Indices of ``k`` films per class (whole patients) and of every film left.

    Patients of each class are taken in a random order; a patient joins the draw when
    all their films of that class still fit in ``k``. Patients with films in both
    classes stay out of the draw's other class and out of the rest. Patients in
    ``exclude_patients`` are never drawn (their films stay in the rest): e.g. the
    patients of the films an app offers as samples, so that a calibration shipped
    with the app was not fitted on them.

    Returns ``(draw (2k,) int, rest (M,) int)``, both sorted.
    """
    labels = np.asarray(labels).astype(int)
    patient_ids = np.asarray(patient_ids).astype(str)
    if len(labels) != len(patient_ids):
        raise ValueError(f"{len(labels)} labels but {len(patient_ids)} patient ids.")
    if k < 1:
        raise ValueError(f"k must be >= 1 film per class, got {k}.")
    drawable = ~np.isin(patient_ids, np.asarray(list(exclude_patients), dtype=str))  # (N,) bool
    drawn = []
    for label in (0, 1):
        members = np.flatnonzero((labels == label) & drawable)
        patients = np.unique(patient_ids[members])
        if members.size < k:
            left_out = int(((labels == label) & ~drawable).sum())
            raise ValueError(f"The site has {members.size} films of class {label} to draw from"
                             + (f" ({left_out} more belong to excluded patients)" if left_out else "")
                             + f"; k = {k} needs more.")
        chosen, room = [], k
        for patient in rng.permutation(patients):
            films = members[patient_ids[members] == patient]
            if len(films) <= room:
                chosen.extend(films.tolist())
                room -= len(films)
            if room == 0:
                break
        if room:
            raise ValueError(f"Could not draw exactly {k} films of class {label} by whole patients.")
        drawn.extend(chosen)
    draw = np.sort(np.asarray(drawn, dtype=np.int64))
    drawn_patients = set(patient_ids[draw].tolist())
    rest = np.flatnonzero([patient not in drawn_patients for patient in patient_ids])
    return draw, rest


def split_patients(patient_ids, folds: int, rng: np.random.Generator) -> np.ndarray:
    """(N,) fold number in [0, folds) per film, whole patients per fold, sizes balanced."""
    patient_ids = np.asarray(patient_ids).astype(str)
    patients = rng.permutation(np.unique(patient_ids))
    fold_of = {patient: index % folds for index, patient in enumerate(patients)}
    return np.array([fold_of[patient] for patient in patient_ids], dtype=np.int64)


# --------------------------------------------------------------------------- #
# The head: a linear map of pooled features, refit anchored on training films
# --------------------------------------------------------------------------- #
@dataclass(frozen=True)
class LinearHead(site_runtime.LinearHead):
    """:class:`helpers.serving.site.LinearHead`, read here from a Keras model."""

    @classmethod
    def from_model(cls, model) -> LinearHead:
        """The Keras model's own head (its ``logit`` Dense layer)."""
        kernel, bias = model.get_layer(LOGIT_LAYER).get_weights()  # (D, 1), (1,)
        return cls(np.asarray(kernel[:, 0], dtype=np.float64), float(bias[0]))


@dataclass(frozen=True)
class AnchoredSpace:
    """Where the head is refit: the model's own logit plus the top principal components.

    The original logit keeps what training taught (the anchor); ``dims`` whitened
    principal components of the training features give the refit room to move.
    """

    head: LinearHead
    mean: np.ndarray  # (D,)
    components: np.ndarray  # (dims, D), rows scaled to unit variance on training

    @classmethod
    def fit(cls, head: LinearHead, training_features, dims: int = 32) -> AnchoredSpace:
        features = np.asarray(training_features, dtype=np.float64)
        mean = features.mean(axis=0)
        _, singular, vectors = np.linalg.svd(features - mean, full_matrices=False)
        dims = min(dims, len(singular))
        scale = singular[:dims] / math.sqrt(max(len(features) - 1, 1))  # (dims,) std per component
        return cls(head, mean, vectors[:dims] / scale[:, None])

    def transform(self, features) -> np.ndarray:
        """(N, D) pooled features -> (N, 1 + dims): [original logit, whitened components]."""
        features = np.asarray(features, dtype=np.float64)
        return np.column_stack([self.head.logits(features), (features - self.mean) @ self.components.T])

    def to_head(self, coefficients: np.ndarray, intercept: float) -> LinearHead:
        """The refit model written back as a head on the pooled features."""
        anchor, rest = float(coefficients[0]), np.asarray(coefficients[1:])
        weights = anchor * self.head.weights + self.components.T @ rest  # (D,)
        bias = anchor * self.head.bias - float(self.mean @ (self.components.T @ rest)) + float(intercept)
        return LinearHead(weights, bias)


@dataclass(frozen=True)
class Anchor:
    """The training films in an :class:`AnchoredSpace`, computed once for every refit."""

    space: AnchoredSpace
    x: np.ndarray  # (N, 1 + dims)
    labels: np.ndarray  # (N,)

    @classmethod
    @one_blas_thread()
    def build(cls, head: LinearHead, training_features, training_labels, dims: int = 32) -> Anchor:
        space = AnchoredSpace.fit(head, training_features, dims)
        labels = np.asarray(training_labels).astype(int)
        if len(labels) != len(training_features) or len(np.unique(labels)) < 2:
            raise ValueError("Need one label per training film, with both classes present.")
        return cls(space, space.transform(training_features), labels)


def weighted_logistic(x, y, weights, regularization: float = 1.0, iterations: int = 50,
                      tolerance: float = 1e-8) -> tuple[np.ndarray, float]:
    """``(coefficients (D,), intercept)`` minimizing ``C * sum(w * log loss) + |coefficients|^2 / 2``.

    The objective of scikit-learn's ``LogisticRegression(C=regularization)`` with
    sample weights, solved by Newton's method with step halving (a few milliseconds
    for thousands of rows and tens of columns, so thousands of refits stay cheap).
    """
    x = np.asarray(x, dtype=np.float64)
    design = np.column_stack([x, np.ones(len(x))])  # (N, D + 1), intercept last
    y = np.asarray(y, dtype=np.float64)
    weights = np.asarray(weights, dtype=np.float64) * regularization
    penalty = np.ones(design.shape[1])
    penalty[-1] = 0.0  # the intercept is not penalized

    def objective(beta):
        z = design @ beta
        return float(np.sum(weights * (np.logaddexp(0.0, z) - y * z)) + 0.5 * np.sum(penalty * beta ** 2))

    beta = np.zeros(design.shape[1])
    value = objective(beta)
    for _ in range(iterations):
        p = sigmoid(design @ beta)
        gradient = design.T @ (weights * (p - y)) + penalty * beta
        hessian = (design * (weights * p * (1 - p))[:, None]).T @ design + np.diag(penalty) + 1e-9 * np.eye(len(beta))
        step = np.linalg.solve(hessian, gradient)
        scale = 1.0
        while scale > 1e-4:
            candidate = beta - scale * step
            candidate_value = objective(candidate)
            if candidate_value <= value:
                break
            scale /= 2
        else:
            break
        converged = value - candidate_value < tolerance * max(1.0, abs(value))
        beta, value = candidate, candidate_value
        if converged:
            break
    return beta[:-1], float(beta[-1])


def refit_head(anchor: Anchor, local_features, local_labels, local_share: float = 0.5,
               regularization: float = 1.0) -> LinearHead:
    """Logistic regression on training films plus weighted local films, in the anchor's space.

    Each class gets equal total weight within training and within the local films
    (a balanced fit: the site's class mix is put back later, by
    :func:`shift_to_prevalence`); the local films together weigh ``local_share`` of
    the total. ``regularization`` is the inverse L2 strength ``C``.
    """
    if not 0.0 < local_share < 1.0:
        raise ValueError(f"local_share must be in (0, 1), got {local_share}.")
    local_labels = np.asarray(local_labels).astype(int)
    if len(np.unique(local_labels)) < 2:
        raise ValueError("The local films need both classes (NORMAL and PNEUMONIA).")
    x = np.vstack([anchor.x, anchor.space.transform(local_features)])
    y = np.concatenate([anchor.labels, local_labels])
    weights = np.concatenate([
        _balanced_weights(anchor.labels) * (1.0 - local_share) / len(anchor.labels),
        _balanced_weights(local_labels) * local_share / len(local_labels),
    ]) * len(y)
    coefficients, intercept = weighted_logistic(x, y, weights, regularization)
    return anchor.space.to_head(coefficients, intercept)


def _balanced_weights(labels: np.ndarray) -> np.ndarray:
    """(N,) per-film weights of :func:`helpers.imbalance.class_weights` (they sum to N, half per class)."""
    weights = class_weights(labels)
    return np.where(labels == 1, weights[1], weights[0])


# --------------------------------------------------------------------------- #
# Calibration and the site's class mix
# --------------------------------------------------------------------------- #
def fit_platt(logits, labels) -> tuple[float, float]:
    """(slope, intercept) of P(PNEUMONIA) = sigmoid(slope * logit + intercept), by max likelihood.

    Balanced (each class half the weight), lightly regularized so that a draw the
    logits separate perfectly still gives a finite slope. Raises
    :class:`LocalFilmsContradictModel` when the slope is not positive (the local
    films contradict the model's ranking), ValueError for films of one class only.
    """
    logits = np.asarray(logits, dtype=np.float64).reshape(-1, 1)
    labels = np.asarray(labels).astype(int)
    if len(np.unique(labels)) < 2:
        raise ValueError("Platt scaling needs films of both classes.")
    coefficients, intercept = weighted_logistic(logits, labels, _balanced_weights(labels))
    slope = float(coefficients[0])
    if slope <= 0:
        raise LocalFilmsContradictModel(
            f"Platt slope {slope:.3f} <= 0: on these local films the model ranks NORMAL above PNEUMONIA. "
            "Do not use the model at this site; check the films and labels.")
    return slope, intercept


def estimate_prevalence(probabilities, prior: float = 0.5, iterations: int = 100,
                        tolerance: float = 1e-6) -> float:
    """The share of PNEUMONIA among unlabelled films, by EM (Saerens et al. 2002).

    ``probabilities`` are calibrated for a population with PNEUMONIA share ``prior``;
    the estimate is the prevalence under which they are self-consistent.
    """
    p = np.clip(np.asarray(probabilities, dtype=np.float64), 1e-9, 1 - 1e-9)
    if p.size == 0:
        raise ValueError("Need at least one unlabelled film to estimate the class mix.")
    if not 0.0 < prior < 1.0:
        raise ValueError(f"prior must be in (0, 1), got {prior}.")
    estimate = prior
    for _ in range(iterations):
        ratio_positive, ratio_negative = estimate / prior, (1 - estimate) / (1 - prior)
        adjusted = ratio_positive * p / (ratio_positive * p + ratio_negative * (1 - p))
        updated = float(adjusted.mean())
        if abs(updated - estimate) < tolerance:
            return updated
        estimate = updated
    return estimate


def shift_to_prevalence(intercept: float, from_prior: float, to_prior: float) -> float:
    """The calibration intercept for a population whose PNEUMONIA share is ``to_prior``."""
    return float(intercept + logit(to_prior) - logit(from_prior))
