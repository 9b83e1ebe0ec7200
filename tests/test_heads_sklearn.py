"""The classical heads pass scikit-learn's estimator checks (``parametrize_with_checks``).

Checks a head fails on purpose are listed with the reason. The paper head (Keras) is not run
through them: each check fits a Keras model, and the whole battery takes minutes, well over
this suite's budget; its contract is covered in tests/test_heads.py.
"""

from __future__ import annotations

from sklearn.utils.estimator_checks import parametrize_with_checks

from xrayfx.study.heads.classical import KNNHead, LinearSVMHead, LogisticRegressionHead, RBFSVMHead

CALIBRATION_VS_CLASS_WEIGHT = (
    "predict is the argmax of probabilities calibrated on held-out folds (CalibratedClassifierCV), "
    "which re-learns the class priors and so undoes most of the margin shift class_weight gives the SVM"
)
KNN_NO_CLASS_WEIGHT = (
    "k-NN cannot weight classes; KNNHead refuses class_weight with a UsageError rather than ignore it "
    "(use --balance smote or random)"
)


def expected_failures(head) -> dict[str, str]:
    """The checks a head fails by design, and why."""
    if isinstance(head, KNNHead):
        return {"check_class_weight_classifiers": KNN_NO_CLASS_WEIGHT}
    if isinstance(head, (LinearSVMHead, RBFSVMHead)):
        return {"check_class_weight_classifiers": CALIBRATION_VS_CLASS_WEIGHT}
    return {}


@parametrize_with_checks(
    # cv=2: the SVM heads calibrate on cv folds, and two keep the battery fast (it is the same code path).
    [LogisticRegressionHead(), LinearSVMHead(cv=2), RBFSVMHead(cv=2), KNNHead()],
    expected_failed_checks=expected_failures,
)
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)
