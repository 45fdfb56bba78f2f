// Models: the list with metrics and aliases; promote to `production`, set
// any alias, download (fetched with the token, saved as a file), delete.

import { h, mount, fmtNum, fmtPct, fmtTime, shortId, facts, errorBox, describe } from "../dom.js";
import { api, request } from "../api.js";
import { lineChart, widthFor } from "../charts.js";
import { baseName } from "./jobs.js";
import { calibrationSection } from "./calibration.js";

function validationOf(m) {
  const v = m.metrics?.validation?.validation;
  if (!v) return null;
  return v.accuracy !== undefined ? { name: "accuracy", value: v.accuracy } : { name: "mAP", value: v.map };
}

function testOf(m) {
  const t = m.metrics?.test?.metrics;
  if (!t) return null;
  return t.accuracy !== undefined ? { name: "accuracy", value: t.accuracy } : { name: "mAP", value: t.map };
}

async function download(id, button) {
  button.disabled = true;
  try {
    const resp = await request(`/models/${id}/download`);
    const url = URL.createObjectURL(await resp.blob());
    const a = h("a", { href: url, download: `vitrine-model-${id}.tar.gz`, hidden: true });
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10000);
  } catch (e) {
    button.after(errorBox(e));
  } finally {
    button.disabled = false;
  }
}

function actions(m, reload) {
  const msg = h("div", { class: "row-msg", role: "status" });
  const promote = h("button", { type: "button", class: "promote", "data-model": m.id,
    disabled: m.aliases.includes("production"),
    onclick: async () => {
      try {
        await api("/models/aliases/production", { method: "PUT", json: { model_id: m.id } });
        reload();
      } catch (e) { mount(msg, errorBox(e)); }
    } }, m.aliases.includes("production") ? "In production" : "Promote to production");
  const dl = h("button", { type: "button", onclick: () => download(m.id, dl) }, "Download");
  const del = h("button", { type: "button", class: "danger", "data-model": m.id,
    onclick: async () => {
      if (!confirm(`Delete model ${shortId(m.id)}? Its files are removed.`)) return;
      try {
        await api(`/models/${m.id}`, { method: "DELETE" });
        reload();
      } catch (e) { mount(msg, errorBox(e)); }
    } }, "Delete");
  return h("div", { class: "actions" }, promote, dl, del, msg);
}

export async function renderList(main) {
  const box = h("div", {}, h("p", { class: "muted" }, "Loading…"));
  mount(main, h("h1", {}, "Models"), box);
  async function load() {
    const models = await api("/models?limit=200");
    mount(box, models.length ? h("div", { class: "table-scroll" }, h("table", { class: "list", id: "models-table" },
      h("thead", {}, h("tr", {}, ["Model", "Base model", "Task", "Classes", "Validation", "Test", "Aliases", "Created", ""].map((t) => h("th", { scope: "col" }, t)))),
      h("tbody", {}, models.map((m) => {
        const v = validationOf(m), t = testOf(m);
        return h("tr", { "data-model": m.id },
          h("td", {}, h("a", { href: `#/models/${m.id}` }, shortId(m.id))),
          h("td", { class: "clip", title: m.base_model }, baseName(m.base_model)),
          h("td", {}, m.task),
          h("td", {}, fmtNum(m.labels.length)),
          h("td", {}, v ? `${v.name} ${fmtPct(v.value)}` : "–"),
          h("td", {}, t ? `${t.name} ${fmtPct(t.value)}` : "–"),
          h("td", { class: "aliases" }, m.aliases.map((a) => h("span", { class: `chip${a === "production" ? " prod" : ""}` }, a))),
          h("td", {}, fmtTime(m.created_at)),
          h("td", {}, actions(m, load)));
      }))))
      : h("p", { class: "muted" }, "No model yet: a job that succeeds (or is cancelled after an epoch) makes one."));
  }
  await load();
}

export async function renderOne(main, route) {
  const id = route.parts[1];
  const m = await api(`/models/${encodeURIComponent(id)}`);
  const card = m.metrics || {};
  const v = validationOf(m), t = testOf(m);
  const hist = card.history || [];
  const aliasInput = h("input", { id: "alias-name", name: "alias", required: true, pattern: "[A-Za-z0-9._-]+", placeholder: "production", "aria-describedby": "alias-error" });
  const aliasErr = h("div", { id: "alias-error", class: "error field-error", role: "alert", hidden: true });
  const aliasForm = h("form", { class: "row", onsubmit: async (e) => {
    e.preventDefault();
    aliasErr.hidden = true;
    try {
      await api(`/models/aliases/${encodeURIComponent(aliasInput.value.trim())}`, { method: "PUT", json: { model_id: m.id } });
      renderOne(main, route);
    } catch (err) {
      aliasErr.textContent = describe(err);
      aliasErr.hidden = false;
    }
  } }, h("label", { for: "alias-name" }, "Alias"), aliasInput, h("button", { type: "submit" }, "Point it here"), aliasErr);
  mount(main,
    h("h1", {}, `Model ${shortId(m.id)}`),
    h("div", { class: "grid2" },
      h("section", { class: "card" }, h("h2", {}, "Model"), facts([
        ["Id", h("code", {}, m.id)],
        ["Base model", m.base_model],
        ["Task", m.task],
        ["Labels", m.labels.join(", ")],
        ["Best epoch", fmtNum(card.best_epoch)],
        ["Validation", v ? `${v.name} ${fmtPct(v.value)}` : "–"],
        ["Test", t ? `${t.name} ${fmtPct(t.value)}` : "no test split"],
        card.thresholds ? ["Thresholds", card.thresholds.map((x, i) => `${m.labels[i]} ${fmtNum(x)}`).join(", ")] : null,
        ["Trained by", m.job_id ? h("a", { href: `#/jobs/${m.job_id}` }, shortId(m.job_id)) : "–"],
        ["Created", fmtTime(m.created_at)],
        ["Aliases", m.aliases.length ? m.aliases.join(", ") : "none"],
      ]), actions(m, () => renderOne(main, route)), aliasForm,
      h("p", {}, h("a", { class: "button", href: `#/predict?model=${m.id}` }, "Try it"))),
      h("section", { class: "card" }, lineChart({
        id: "model-history", title: "Validation per epoch", xLabel: "epoch", yLabel: "score", yMin: 0, yMax: 1,
        integerX: true, width: widthFor(2),
        series: [
          { name: v?.name || "score", points: hist.map((e) => [e.epoch, e.validation?.accuracy ?? e.validation?.map]) },
          { name: "macro F1", points: hist.map((e) => [e.epoch, e.validation?.macro_f1]) },
        ],
      }))),
    calibrationSection(card));
}
