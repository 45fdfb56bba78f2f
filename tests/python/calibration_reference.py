"""The calibration references for tests/model/calibration_parity.rs.

Reads {"multi_class": {"logits", "targets"}, "multi_label": {...}} (JSON),
fits temperature scaling with scipy.optimize on log T, and measures the
raw and the scaled scores: ECE with torchmetrics' calibration_error
(norm="l1", n_bins=15), Brier with scikit-learn, NLL with torch. Prints
JSON: per task, the temperatures and both measures.
"""
import json
import sys

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import minimize_scalar
from sklearn.metrics import brier_score_loss
from torchmetrics.functional.classification import (
    binary_calibration_error,
    multiclass_calibration_error,
)


def fit(nll):
    r = minimize_scalar(nll, bounds=(-4.0, 4.0), method="bounded",
                        options={"xatol": 1e-10, "maxiter": 1000})
    return float(np.exp(r.x))


def multi_class(z, y):
    k = z.shape[1]
    t = fit(lambda lt: F.cross_entropy(z / np.exp(lt), y).item())

    def measures(logits):
        p = logits.softmax(-1)
        return {
            "ece": multiclass_calibration_error(p, y, num_classes=k, n_bins=15, norm="l1").item(),
            "brier": brier_score_loss(y.numpy(), p.numpy(), labels=list(range(k)),
                                      scale_by_half=False),
            "nll": F.cross_entropy(logits, y).item(),
        }

    return {"temperatures": [t], "before": measures(z), "after": measures(z / t)}


def multi_label(z, y):
    k = z.shape[1]
    ts = [fit(lambda lt, c=c: F.binary_cross_entropy_with_logits(z[:, c] / np.exp(lt), y[:, c]).item())
          for c in range(k)]

    def measures(logits):
        p = logits.sigmoid()
        return {
            "ece": float(np.mean([binary_calibration_error(p[:, c], y[:, c].long(), n_bins=15,
                                                           norm="l1").item() for c in range(k)])),
            "brier": float(np.mean([brier_score_loss(y[:, c].numpy(), p[:, c].numpy())
                                    for c in range(k)])),
            "nll": F.binary_cross_entropy_with_logits(logits, y).item(),
        }

    return {"temperatures": ts, "before": measures(z), "after": measures(z / torch.tensor(ts, dtype=z.dtype))}


def main():
    data = json.load(open(sys.argv[1]))
    mc, ml = data["multi_class"], data["multi_label"]
    z = torch.tensor(mc["logits"], dtype=torch.float64)
    y = torch.tensor([t[0] for t in mc["targets"]])
    zl = torch.tensor(ml["logits"], dtype=torch.float64)
    yl = torch.zeros_like(zl)
    for i, t in enumerate(ml["targets"]):
        yl[i, t] = 1.0
    print(json.dumps({"multi_class": multi_class(z, y), "multi_label": multi_label(zl, yl)}))


if __name__ == "__main__":
    main()
