"""The scikit-learn estimator in a Pipeline, tuned with GridSearchCV.

    python examples/estimator_grid_search.py

scikit-learn's digits as 64 feature vectors, 5 labels per class, the other training rows
unlabeled (``y == -1``). The pipeline scales the features and fits ``SemiSupervisedClassifier``
(an MLP with feature-space views); the grid compares FixMatch and SoftMatch. ``score`` ignores
unlabeled rows, so each validation fold is scored on its labeled rows only.

SEMIMATCH_EXAMPLE_SMALL=1 trains a few iterations only (the test suite runs it that way).
"""

from __future__ import annotations

import os

import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import GridSearchCV, StratifiedKFold, train_test_split
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from semimatch.sklearn import SemiSupervisedClassifier

SMALL = os.environ.get("SEMIMATCH_EXAMPLE_SMALL") == "1"


def main() -> None:
    X, y = load_digits(return_X_y=True)
    if SMALL:
        X, y = X[:700], y[:700]
    X_train, X_test, y_train, y_test = train_test_split(
        X, y, test_size=200 if SMALL else 360, stratify=y, random_state=0
    )
    # Keep 5 labels per class; the rest of the training rows are unlabeled (-1).
    rng = np.random.default_rng(0)
    keep = np.concatenate(
        [rng.choice(np.flatnonzero(y_train == c), 5, replace=False) for c in range(10)]
    )
    y_semi = np.full_like(y_train, -1)
    y_semi[keep] = y_train[keep]

    pipe = Pipeline(
        [
            ("scale", StandardScaler()),
            ("clf", SemiSupervisedClassifier(max_iter=8 if SMALL else 1000, random_state=0)),
        ]
    )
    grid = GridSearchCV(
        pipe,
        {"clf__algorithm": ["fixmatch", "softmatch"]},
        # Stratifying on y_semi spreads the labeled rows of every class over the folds.
        cv=StratifiedKFold(n_splits=2, shuffle=True, random_state=0),
    )
    grid.fit(X_train, y_semi)
    for params, score in zip(grid.cv_results_["params"], grid.cv_results_["mean_test_score"]):
        print(params, f"validation accuracy {score:.3f}")
    print("best:", grid.best_params_, f"test accuracy {grid.score(X_test, y_test):.3f}")


if __name__ == "__main__":
    main()
