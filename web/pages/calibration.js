// The model page's calibration card: the reliability diagram (mean score
// against how often it was right, per bin, before and after temperature
// scaling) and ECE, Brier and NLL on validation and test.

import { h, fmtNum, facts } from "../dom.js";
import { lineChart, widthFor } from "../charts.js";

function points(measures) {
  return (measures?.bins || []).filter((b) => b.count > 0).map((b) => [b.confidence, b.accuracy]);
}

function row(name, cmp) {
  if (!cmp) return null;
  const f = (k) => `${fmtNum(cmp.before[k], 4)} → ${fmtNum(cmp.after[k], 4)}`;
  return [name, `ECE ${f("ece")}, Brier ${f("brier")}, NLL ${f("nll")}`];
}

/** The card's calibration section; a model without one says it serves raw scores. */
export function calibrationSection(card) {
  const c = card?.calibration;
  if (!c) {
    return h("section", { class: "card", id: "calibration" }, h("h2", {}, "Calibration"),
      h("p", { class: "muted" }, "This model has no calibration: /predict serves its raw scores."));
  }
  const shown = c.test || c.validation;
  return h("section", { class: "card", id: "calibration" }, h("h2", {}, "Calibration"),
    facts([
      ["Temperature", c.temperatures.map((t) => fmtNum(t, 3)).join(", ")],
      row("Validation", c.validation),
      row("Test", c.test),
    ]),
    lineChart({
      id: "reliability", title: `Reliability (${c.test ? "test" : "validation"})`,
      xLabel: "mean score", yLabel: "fraction right", yMin: 0, yMax: 1, width: widthFor(2),
      series: [
        { name: "perfect", points: [[0, 0], [1, 1]] },
        { name: "raw", points: points(shown.before) },
        { name: "calibrated", points: points(shown.after) },
      ],
    }));
}
