// Sweeps: the list, and one sweep's leaderboard (refreshed while it runs).

import { h, mount, fmtNum, fmtTime, fmtDuration, shortId, badge, facts } from "../dom.js";
import { api } from "../api.js";
import { baseName } from "./jobs.js";

const TERMINAL = ["succeeded", "failed", "cancelled"];

/** The config fields (other than base model and mode) that differ between candidates. */
function varying(configs) {
  const keys = [...new Set(configs.flatMap((c) => Object.keys(c)))].sort();
  return keys.filter((k) => k !== "base_model" && k !== "mode"
    && new Set(configs.map((c) => JSON.stringify(c[k] ?? null))).size > 1);
}

export async function renderList(main) {
  const sweeps = await api("/sweeps?limit=100");
  mount(main, h("h1", {}, "Sweeps"),
    h("p", { class: "help" }, "A sweep trains several candidate configs on one dataset and ranks them (POST /sweeps; see docs/sweeps.md)."),
    sweeps.length ? h("div", { class: "table-scroll" }, h("table", { class: "list", id: "sweeps-table" },
      h("thead", {}, h("tr", {}, ["Sweep", "Status", "Metric", "Candidates", "Winner", "Created"].map((t) => h("th", { scope: "col" }, t)))),
      h("tbody", {}, sweeps.map((s) => h("tr", {},
        h("td", {}, h("a", { href: `#/sweeps/${s.id}` }, shortId(s.id))),
        h("td", {}, badge(s.status)),
        h("td", {}, s.metric),
        h("td", {}, fmtNum(s.leaderboard?.length)),
        h("td", {}, s.winner_model_id ? h("a", { href: `#/models/${s.winner_model_id}` }, shortId(s.winner_model_id)) : "–"),
        h("td", {}, fmtTime(s.created_at)))))))
      : h("p", { class: "muted" }, "No sweep yet."));
}

export async function renderOne(main, route) {
  const id = route.parts[1];
  let timer = null;
  let stopped = false;
  async function load() {
    const s = await api(`/sweeps/${encodeURIComponent(id)}`);
    const varies = varying(s.leaderboard.map((r) => r.config || {}));
    mount(main, h("h1", {}, `Sweep ${shortId(s.id)} `, badge(s.status)),
      s.error ? h("div", { class: "error", role: "alert" }, s.error) : null,
      facts([
        ["Metric", s.metric],
        ["Dataset", h("a", { href: `#/datasets/${s.dataset_id}` }, shortId(s.dataset_id))],
        ["Halving rungs", s.rungs?.length ? s.rungs.join(", ") : "none"],
        ["Promotes to", s.promote_alias || "–"],
        s.stop_reason ? ["Stopped", s.stop_reason] : null,
        ["Winner", s.winner_model_id ? h("a", { href: `#/models/${s.winner_model_id}` }, shortId(s.winner_model_id)) : "–"],
      ]),
      h("h2", {}, "Leaderboard"),
      h("div", { class: "table-scroll" }, h("table", { class: "list num", id: "leaderboard" },
        h("thead", {}, h("tr", {}, ["Rank", "Job", "Status", "Base model", "Mode", "Settings", `Best ${s.metric}`, "Epoch", "Epochs", "Test", "Wall time", "Images/s", "Model"].map((t) => h("th", { scope: "col" }, t)))),
        h("tbody", {}, s.leaderboard.map((r) => h("tr", { class: r.job_id === s.winner_job_id ? "best" : "" },
          h("td", {}, String(r.rank)),
          h("td", {}, h("a", { href: `#/jobs/${r.job_id}` }, shortId(r.job_id))),
          h("td", {}, badge(r.status), r.stopped_rung ? h("span", { class: "muted" }, ` stopped at ${r.stopped_rung}`) : ""),
          h("td", { class: "clip", title: r.config?.base_model }, baseName(r.config?.base_model)),
          h("td", {}, r.config?.mode || "linear_probe"),
          h("td", { class: "settings" }, varies.map((k) => `${k} ${JSON.stringify(r.config?.[k] ?? null)}`).join(", ") || "–"),
          h("td", {}, fmtNum(r.best_metric)),
          h("td", {}, fmtNum(r.best_epoch)),
          h("td", {}, fmtNum(r.epochs_done)),
          h("td", {}, fmtNum(r.test_metric)),
          h("td", {}, fmtDuration(r.wall_seconds)),
          h("td", {}, fmtNum(r.images_per_sec, 1)),
          h("td", {}, r.model_id ? h("a", { href: `#/models/${r.model_id}` }, shortId(r.model_id)) : "–")))))));
    if (!stopped && !TERMINAL.includes(s.status)) timer = setTimeout(() => load().catch(() => {}), 3000);
  }
  await load();
  return () => { stopped = true; clearTimeout(timer); };
}
