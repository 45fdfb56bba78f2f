// One job, live: status, progress and ETA, loss and accuracy (or mAP)
// curves per epoch and per step from the SSE stream, the per-epoch table,
// and for a chosen epoch the confusion matrix, per-class precision and
// recall, and the multi-label thresholds. Cancel while it runs.

import { h, mount, fmtNum, fmtPct, fmtTime, fmtDuration, shortId, badge, facts, errorBox, describe } from "../dom.js";
import { api } from "../api.js";
import { follow } from "../sse.js";
import { lineChart, heatmap, scoreBar, widthFor, timeSharesBar, totalShares } from "../charts.js";
import { progressText, progressFraction, baseName, headline } from "./jobs.js";

const TERMINAL = ["succeeded", "failed", "cancelled"];

export async function render(main, route) {
  const id = route.parts[1];
  let job = await api(`/jobs/${encodeURIComponent(id)}`);
  const steps = new Map(); // global step -> training loss, as the stream reports it
  let chosenEpoch = null; // null: the best epoch
  let conn = "connecting";
  let stream = null;

  const head = h("section", { id: "job-head" });
  const prog = h("section", { id: "job-progress", class: "card" });
  const curves = h("section", { id: "job-curves", class: "grid2" });
  const stepBox = h("section", { id: "job-steps", class: "card" });
  const table = h("section", { id: "job-epochs", class: "card" });
  const detail = h("section", { id: "job-detail" });
  mount(main, head, prog, curves, stepBox, table, detail);

  const selection = () => job.config?.selection_metric;
  function score(m) {
    if (!m?.validation) return null;
    if (selection() === "macro_f1") return m.validation.macro_f1;
    return headline(m.validation)?.value ?? null;
  }
  function bestEpoch() {
    let best = null;
    for (const m of job.metrics || []) {
      const v = score(m);
      if (v !== null && (best === null || v > score(best))) best = m;
    }
    return best;
  }

  function renderHead() {
    const running = !TERMINAL.includes(job.status);
    const cancel = h("button", { type: "button", id: "cancel-job", class: "danger", disabled: job.cancel_requested,
      onclick: async () => {
        cancel.disabled = true;
        try {
          job = { ...job, ...(await api(`/jobs/${id}/cancel`, { method: "POST" })) };
          renderAll();
        } catch (e) {
          cancel.disabled = false;
          cancel.after(errorBox(e));
        }
      } }, job.cancel_requested ? "Cancelling…" : "Cancel job");
    mount(head,
      h("div", { class: "title-row" },
        h("h1", {}, `Job ${shortId(job.id)} `, badge(job.status)),
        h("span", { id: "conn-state", class: `conn conn-${conn}`, role: "status", "aria-live": "polite" },
          conn === "live" ? "● live" : conn === "reconnecting" ? "Reconnecting…" : conn === "connecting" ? "Connecting…" : ""),
        running ? cancel : null),
      job.error ? h("div", { class: "error", role: "alert", id: "job-error" }, job.error) : null,
      facts([
        ["Base model", h("span", { title: job.config?.base_model }, baseName(job.config?.base_model))],
        ["Mode", job.config?.mode || "linear_probe"],
        ["Dataset", h("a", { href: `#/datasets/${job.dataset_id}` }, shortId(job.dataset_id))],
        ["Epochs", `${(job.metrics || []).length} of ${job.config?.epochs ?? 10}`],
        ["Created", fmtTime(job.created_at)],
        job.finished_at ? ["Finished", fmtTime(job.finished_at)] : null,
        job.model_id ? ["Model", h("a", { href: `#/models/${job.model_id}`, id: "job-model" }, shortId(job.model_id))] : null,
        job.sweep_id ? ["Sweep", h("a", { href: `#/sweeps/${job.sweep_id}` }, shortId(job.sweep_id))] : null,
      ]));
  }

  function renderProgress() {
    const p = job.progress || {};
    const running = job.status === "running";
    mount(prog, h("h2", {}, "Progress"),
      h("progress", { id: "job-progress-bar", max: 1, value: progressFraction(job), "aria-label": "Training progress" }),
      h("p", { id: "job-progress-text" },
        job.status === "queued" ? "Waiting for a worker." : TERMINAL.includes(job.status) ? `Ended: ${job.status}.` : progressText(p, job.config?.epochs) || "Starting…"),
      running ? facts([
        ["ETA", h("span", { id: "job-eta" }, fmtDuration(p.eta_secs))],
        ["Images/s", fmtNum(p.images_per_sec, 1)],
        ["Learning rate", p.learning_rate !== undefined ? p.learning_rate.toExponential(2) : "–"],
        ["Last loss", fmtNum(p.loss, 4)],
      ]) : null);
  }

  function renderCurves() {
    const ms = job.metrics || [];
    const multiLabel = ms.some((m) => m.validation?.map !== undefined);
    const metricName = multiLabel ? "mAP" : "accuracy";
    mount(curves,
      h("div", { class: "card" }, lineChart({
        id: "loss-chart", title: "Loss per epoch", xLabel: "epoch", yLabel: "loss", integerX: true, width: widthFor(2),
        series: [
          { name: "train", points: ms.map((m) => [m.epoch, m.train_loss]) },
          { name: "validation", points: ms.map((m) => [m.epoch, m.validation_loss]) },
        ],
        empty: "The first epoch has not ended yet.",
      })),
      h("div", { class: "card" }, lineChart({
        id: "metric-chart", title: `Validation ${metricName} per epoch`, xLabel: "epoch", yLabel: metricName, yMin: 0, yMax: 1,
        integerX: true, width: widthFor(2),
        series: [
          { name: metricName, points: ms.map((m) => [m.epoch, multiLabel ? m.validation.map : m.validation.accuracy]) },
          { name: "macro F1", points: ms.map((m) => [m.epoch, m.validation?.macro_f1]) },
        ],
        empty: "The first epoch has not ended yet.",
      })),
      sharesCard(ms));
  }

  /** Where the job's time went, over its epochs (a stacked bar). */
  function sharesCard(ms) {
    const shares = totalShares(ms);
    if (!shares) return null;
    const bound = shares.input_wait > shares.compute + shares.optimizer ? "input-bound" : "compute-bound";
    return h("div", { class: "card" }, timeSharesBar({
      id: "time-shares", title: `Where the time went (${bound})`, shares,
    }));
  }

  function renderSteps() {
    const pts = [...steps.entries()].sort((a, b) => a[0] - b[0]);
    stepBox.hidden = !pts.length && TERMINAL.includes(job.status);
    mount(stepBox, lineChart({
      id: "step-chart", title: "Training loss per step (live, since this page opened)", xLabel: "step", yLabel: "loss",
      series: [{ name: "train loss", points: pts }], dots: pts.length < 60, integerX: true,
      empty: "Waiting for the first steps…",
    }));
  }

  function renderTable() {
    const ms = job.metrics || [];
    const best = bestEpoch();
    const multiLabel = ms.some((m) => m.validation?.map !== undefined);
    const cols = ["Epoch", "Train loss", "Val. loss", multiLabel ? "mAP" : "Accuracy", "Macro F1", ...(multiLabel ? ["Micro F1"] : []), "LR", "Time", "Images/s"];
    mount(table, h("h2", {}, "Epochs"), ms.length ? h("div", { class: "table-scroll" }, h("table", { class: "list num", id: "epochs-table" },
      h("thead", {}, h("tr", {}, cols.map((c) => h("th", { scope: "col" }, c)))),
      h("tbody", {}, ms.map((m) => h("tr", { class: best && m.epoch === best.epoch ? "best" : "", "data-epoch": m.epoch },
        h("td", {}, String(m.epoch), best && m.epoch === best.epoch ? h("span", { class: "tag" }, " best") : ""),
        h("td", {}, fmtNum(m.train_loss, 4)),
        h("td", {}, fmtNum(m.validation_loss, 4)),
        h("td", {}, fmtPct(multiLabel ? m.validation?.map : m.validation?.accuracy)),
        h("td", {}, fmtNum(m.validation?.macro_f1)),
        multiLabel ? h("td", {}, fmtNum(m.validation?.micro_f1)) : null,
        h("td", {}, m.learning_rate?.toExponential(2) ?? "–"),
        h("td", {}, fmtDuration(m.seconds)),
        h("td", {}, fmtNum(m.train_images_per_sec, 1)))))))
      : h("p", { class: "muted" }, "No epoch has ended yet."));
  }

  function renderDetail() {
    const ms = job.metrics || [];
    if (!ms.length) { mount(detail); return; }
    const best = bestEpoch();
    const m = ms.find((x) => x.epoch === chosenEpoch) || best || ms[ms.length - 1];
    const v = m.validation || {};
    const labels = job.dataset?.labels || (v.per_class || v.per_label || []).map((c) => c.label);
    const select = h("select", { id: "epoch-select", onchange: (e) => { chosenEpoch = Number(e.target.value); renderDetail(); } },
      ms.map((x) => h("option", { value: x.epoch, selected: x.epoch === m.epoch }, `epoch ${x.epoch}${best && x.epoch === best.epoch ? " (best)" : ""}`)));
    const perClass = v.per_class || v.per_label || [];
    const multiLabel = !!v.per_label;
    mount(detail,
      h("div", { class: "title-row" }, h("h2", {}, "Validation details"),
        h("label", { for: "epoch-select" }, "Epoch "), select),
      v.confusion_matrix ? h("div", { class: "card" }, heatmap({
        id: "confusion", title: `Confusion matrix, epoch ${m.epoch} (rows: true class, columns: predicted)`,
        labels, matrix: v.confusion_matrix, epoch: m.epoch,
      })) : null,
      h("div", { class: "card" }, h("h3", {}, multiLabel ? "Per label" : "Per class"),
        h("div", { class: "table-scroll" }, h("table", { class: "list", id: "per-class" },
          h("thead", {}, h("tr", {}, ["Label", "Precision", "Recall", "F1", "Support", ...(multiLabel ? ["Threshold", "AP"] : [])].map((c) => h("th", { scope: "col" }, c)))),
          h("tbody", {}, perClass.map((c) => h("tr", { "data-label": c.label },
            h("th", { scope: "row" }, c.label),
            h("td", {}, scoreBar(c.precision, `precision of ${c.label}`)),
            h("td", {}, scoreBar(c.recall, `recall of ${c.label}`)),
            h("td", {}, fmtNum(c.f1)),
            h("td", {}, fmtNum(c.support)),
            multiLabel ? h("td", { class: "threshold", "data-threshold": c.threshold }, c.threshold?.toFixed(3) ?? "–") : null,
            multiLabel ? h("td", {}, fmtNum(c.average_precision)) : null)))))),
      multiLabel ? h("p", { class: "help" }, "Thresholds: each label's decision threshold, chosen on validation; /predict uses them unless a request sets its own.") : null);
  }

  function renderAll() {
    renderHead();
    renderProgress();
    renderCurves();
    renderSteps();
    renderTable();
    renderDetail();
  }

  function onEvent({ event, data }) {
    if (!data || typeof data !== "object") return;
    switch (event) {
      case "snapshot":
        job = data;
        if (job.progress?.loss !== undefined && job.progress?.step) steps.set(job.progress.step, job.progress.loss);
        if (TERMINAL.includes(job.status)) finish();
        else renderAll();
        break;
      case "progress":
        job.progress = data;
        if (job.status === "queued") job.status = "running";
        if (data.loss !== undefined && data.step) {
          steps.set(data.step, data.loss);
          renderSteps();
        }
        renderProgress();
        break;
      case "epoch": {
        const ms = (job.metrics || []).filter((m) => m.epoch !== data.epoch);
        ms.push(data);
        ms.sort((a, b) => a.epoch - b.epoch);
        job.metrics = ms;
        renderHead();
        renderCurves();
        renderTable();
        renderDetail();
        break;
      }
      case "status":
        job = { ...job, ...data };
        if (TERMINAL.includes(data.status)) finish();
        else renderHead();
        break;
      default:
        break;
    }
  }

  async function finish() {
    stream?.close();
    stream = null;
    conn = "ended";
    try {
      job = await api(`/jobs/${id}`);
    } catch (_) { /* keep what the stream said */ }
    renderAll();
  }

  renderAll();
  if (!TERMINAL.includes(job.status)) {
    stream = follow(`/jobs/${encodeURIComponent(id)}/events`, {
      onEvent,
      onState: (state) => {
        if (state === "closed" || conn === "ended") return;
        conn = state;
        const el = document.getElementById("conn-state");
        if (el) {
          el.className = `conn conn-${state}`;
          el.textContent = state === "live" ? "● live" : "Reconnecting…";
        }
      },
      onError: (e) => head.append(errorBox(e.problem ? e : new Error(describe(e)))),
    });
  } else {
    conn = "ended";
    renderHead();
  }
  return () => stream?.close();
}
