"""cleanlab 2.9.0's answers on the inputs vitrine's audit test wrote.

Usage: cleanlab_reference.py INPUT.json  ->  JSON on stdout.
INPUT: {"multi_class": {"probs", "labels"}, "multi_label": {"probs",
"labels"}, "features"}. Answers: label-issue masks of
`filter.find_label_issues` with its defaults (filter_by
"prune_by_noise_rate"), self-confidence scores of
`rank.get_label_quality_scores` and of the multi-label
`multilabel_classification.rank.get_label_quality_scores`, and
`OutOfDistribution` feature scores.
"""
import json
import sys
import warnings

import numpy as np
from cleanlab.filter import find_label_issues
from cleanlab.multilabel_classification.rank import get_label_quality_scores as ml_scores
from cleanlab.outlier import OutOfDistribution
from cleanlab.rank import get_label_quality_scores

warnings.filterwarnings("ignore")
data = json.load(open(sys.argv[1]))
mc = data["multi_class"]
probs, labels = np.array(mc["probs"]), np.array(mc["labels"])
ml = data["multi_label"]
ml_probs, ml_labels = np.array(ml["probs"]), ml["labels"]
features = np.array(data["features"])
out = {
    "multi_class_issues": find_label_issues(labels, probs, n_jobs=1).tolist(),
    "multi_class_scores": get_label_quality_scores(labels, probs, method="self_confidence").tolist(),
    "multi_label_issues": find_label_issues(ml_labels, ml_probs, multi_label=True, n_jobs=1).tolist(),
    "multi_label_scores": ml_scores(ml_labels, ml_probs, method="self_confidence").tolist(),
    "outlier_scores": OutOfDistribution().fit_score(features=features, verbose=False).tolist(),
}
print(json.dumps(out))
