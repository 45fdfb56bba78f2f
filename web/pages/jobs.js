// Jobs: the list (status and progress, refreshed while any runs) and the
// form that starts one, with every JobConfig field, its default and help.

import { h, mount, fmtNum, fmtTime, fmtDuration, shortId, badge, describe, randomKey } from "../dom.js";
import { api } from "../api.js";

const TERMINAL = ["succeeded", "failed", "cancelled"];

/**
 * The JobConfig fields (src/train/config.rs): name, input kind, default
 * shown, help. Empty fields are left out of the request, so the server's
 * defaults apply.
 */
const FIELDS = [
  { name: "base_model", kind: "text", required: true, help: "A Hugging Face Hub id (org/name[@rev]) or a local directory in the HF layout: ViT, DINOv2, Swin, ConvNeXt, ResNet, timm vit_*." },
  { name: "mode", kind: "select", options: ["linear_probe", "partial", "full"], def: "linear_probe", help: "linear_probe: backbone frozen, features computed once; partial: the last blocks train; full: everything trains." },
  { name: "epochs", kind: "int", def: 10, min: 1, max: 1000, help: "Passes over the training images." },
  { name: "batch_size", kind: "int", def: 32, min: 1, max: 4096, help: "Images per optimiser step." },
  { name: "learning_rate", kind: "float", placeholder: "1e-3 / 1e-4 / 5e-5 by mode", help: "Peak learning rate; by default 1e-3 (linear probe), 1e-4 (partial), 5e-5 (full)." },
  { name: "task", kind: "select", options: ["", "multi_class", "multi_label"], labels: ["inferred from the dataset", "multi_class", "multi_label"], def: "", help: "multi_class (softmax) or multi_label (sigmoid, per-label thresholds)." },
  { name: "unfreeze_last_n", kind: "int", min: 1, placeholder: "2", advanced: true, help: "partial only: how many of the last blocks (stages for Swin/ConvNeXt/ResNet) train." },
  { name: "weight_decay", kind: "text", def: "0.01", advanced: true, help: "AdamW decay (not on biases and norms): a number in [0, 1) or none, light, medium, heavy." },
  { name: "warmup_ratio", kind: "float", def: 0.1, advanced: true, help: "Share of steps warming up linearly, then cosine decay." },
  { name: "layer_lr_decay", kind: "float", advanced: true, help: "full only: block i's learning rate is decay^(depth-i) of the head's." },
  { name: "label_smoothing", kind: "float", def: 0, advanced: true, help: "Multi-class only, in [0, 1)." },
  { name: "max_grad_norm", kind: "float", def: 1.0, advanced: true, help: "Gradient clipping norm." },
  { name: "grad_accum_steps", kind: "int", def: 1, min: 1, advanced: true, help: "Micro-batches per step (halves by itself on out-of-memory)." },
  { name: "early_stopping_patience", kind: "int", min: 1, advanced: true, help: "Stop after this many epochs without a better validation metric." },
  { name: "selection_metric", kind: "select", options: ["", "accuracy", "map", "macro_f1"], labels: ["accuracy / map by task", "accuracy", "map", "macro_f1"], def: "", advanced: true, help: "The validation metric that picks the saved epoch and drives early stopping." },
  { name: "seed", kind: "int", def: 42, min: 0, advanced: true, help: "Runs are reproducible for a seed." },
  { name: "validation_fraction", kind: "float", def: 0.2, advanced: true, help: "Held out for validation when the dataset has no validation split (stratified)." },
  { name: "image_size", kind: "int", min: 1, placeholder: "the model's", advanced: true, help: "Input resolution; a multiple of the patch size for ViTs." },
  { name: "augmentation", kind: "bool", def: true, advanced: true, help: "Random resized crop and flip while training (not for linear probes)." },
  { name: "randaugment_n", kind: "int", min: 1, advanced: true, label: "randaugment n", help: "RandAugment: ops per image (with m; off when empty)." },
  { name: "randaugment_m", kind: "int", min: 0, max: 30, advanced: true, label: "randaugment m", help: "RandAugment: magnitude bin 0-30." },
  { name: "mixup_alpha", kind: "float", def: 0, advanced: true, help: "MixUp Beta(alpha, alpha) per batch; 0 is off. Not for linear probes." },
  { name: "cutmix_alpha", kind: "float", def: 0, advanced: true, help: "CutMix Beta(alpha, alpha) per batch; 0 is off. Not for linear probes." },
  { name: "drop_path_rate", kind: "float", placeholder: "the model's", advanced: true, help: "Stochastic depth (DINOv2, Swin, ConvNeXt)." },
  { name: "dropout", kind: "float", placeholder: "the model's", advanced: true, help: "hidden_dropout_prob (ViT, DINOv2, Swin)." },
  { name: "mixed_precision", kind: "select", options: ["auto", "bf16", "fp16", "fp32"], def: "auto", advanced: true, help: "On a GPU; the CPU always trains in fp32." },
  { name: "strict_fp32", kind: "bool", def: false, advanced: true, help: "No TF32 matmuls on a GPU." },
  { name: "device", kind: "text", placeholder: "any", advanced: true, help: "cpu, cuda or cuda:N; any worker when empty." },
];

function field(f) {
  const id = `f-${f.name}`;
  const label = h("label", { for: id }, f.label || f.name, f.required ? h("span", { "aria-hidden": "true" }, " *") : null);
  const help = h("small", { id: `${id}-help`, class: "help" }, f.help, f.def !== undefined && f.def !== "" ? ` Default: ${f.def}.` : "");
  const err = h("div", { id: `${id}-error`, class: "error field-error", role: "alert", hidden: true });
  const described = `${id}-help ${id}-error`;
  let input;
  if (f.kind === "select") {
    input = h("select", { id, name: f.name, "aria-describedby": described },
      f.options.map((o, i) => h("option", { value: o, selected: o === f.def }, f.labels ? f.labels[i] : o)));
  } else if (f.kind === "bool") {
    input = h("input", { id, name: f.name, type: "checkbox", checked: f.def, "aria-describedby": described });
    return h("div", { class: "field field-check", "data-field": f.name }, h("div", { class: "check" }, input, label), help, err);
  } else {
    input = h("input", {
      id, name: f.name, type: f.kind === "text" ? "text" : "number",
      step: f.kind === "float" ? "any" : f.kind === "int" ? "1" : undefined,
      min: f.min, max: f.max, required: f.required,
      placeholder: f.placeholder ?? (f.def !== undefined ? String(f.def) : ""),
      "aria-describedby": described, autocomplete: "off",
    });
  }
  return h("div", { class: "field", "data-field": f.name }, label, input, help, err);
}

/** The config object from the form: only fields given (or changed from the default). */
function configOf(form) {
  const cfg = {};
  for (const f of FIELDS) {
    const el = form.elements[f.name];
    if (f.kind === "bool") {
      if (el.checked !== f.def) cfg[f.name] = el.checked;
      continue;
    }
    const v = el.value.trim();
    if (v === "") continue;
    if (f.kind === "select" && v === String(f.def ?? "")) continue;
    if (f.kind === "int" || f.kind === "float") cfg[f.name] = Number(v);
    else if (f.name === "weight_decay" && !Number.isNaN(Number(v))) cfg[f.name] = Number(v);
    else cfg[f.name] = v;
  }
  if (cfg.randaugment_n !== undefined || cfg.randaugment_m !== undefined) {
    cfg.randaugment = { n: cfg.randaugment_n ?? 2, m: cfg.randaugment_m ?? 9 };
  }
  delete cfg.randaugment_n;
  delete cfg.randaugment_m;
  return cfg;
}

/** The form field a problem's detail names (`epochs` must be …), if any. */
function fieldNamed(detail) {
  const names = [...String(detail || "").matchAll(/`([a-z_]+)`|\b(config\.)?([a-z_]+):/g)].map((m) => m[1] || m[3]);
  if (names.includes("randaugment")) return "randaugment_n";
  return names.find((n) => n === "dataset_id" || FIELDS.some((f) => f.name === n));
}

export async function renderForm(main, route) {
  const { datasets } = await api("/datasets?limit=200");
  const chosen = route.query.get("dataset");
  const dsSelect = h("select", { id: "f-dataset_id", name: "dataset_id", required: true, "aria-describedby": "f-dataset_id-help f-dataset_id-error" },
    h("option", { value: "" }, "Choose a dataset…"),
    datasets.map((d) => h("option", { value: d.id, selected: d.id === chosen },
      `${shortId(d.id)} · ${d.counts?.labels ?? "?"} classes · ${d.counts?.images ?? "?"} images`)));
  const formErr = h("div", { id: "job-form-error", class: "error", role: "alert", hidden: true });
  const basic = FIELDS.filter((f) => !f.advanced).map(field);
  const advanced = FIELDS.filter((f) => f.advanced).map(field);
  const form = h("form", { id: "job-form", class: "card", novalidate: true, onsubmit: submit },
    h("div", { class: "field", "data-field": "dataset_id" },
      h("label", { for: "f-dataset_id" }, "dataset", h("span", { "aria-hidden": "true" }, " *")), dsSelect,
      h("small", { id: "f-dataset_id-help", class: "help" }, "A stored dataset. ", h("a", { href: "#/datasets" }, "Upload one"), " first if it is not listed."),
      h("div", { id: "f-dataset_id-error", class: "error field-error", role: "alert", hidden: true })),
    h("div", { class: "fields" }, basic),
    h("details", {}, h("summary", {}, "More settings"), h("div", { class: "fields" }, advanced)),
    formErr,
    h("button", { type: "submit", class: "primary", id: "start-job" }, "Start training"));
  mount(main, h("h1", {}, "New job"), form);

  const key = randomKey(); // one key per form: a double submit queues one job
  async function submit(ev) {
    ev.preventDefault();
    form.querySelectorAll(".field-error").forEach((e) => { e.hidden = true; });
    form.querySelectorAll("[aria-invalid]").forEach((e) => e.removeAttribute("aria-invalid"));
    formErr.hidden = true;
    const dataset_id = dsSelect.value;
    const config = configOf(form);
    const missing = !dataset_id ? "dataset_id" : !config.base_model ? "base_model" : null;
    if (missing) return showError(missing, `${missing === "dataset_id" ? "A dataset" : "A base model"} is required.`);
    const button = form.querySelector("#start-job");
    button.disabled = true;
    try {
      const job = await api("/jobs", { method: "POST", json: { dataset_id, config }, headers: { "Idempotency-Key": key } });
      location.hash = `#/jobs/${job.id}`;
    } catch (e) {
      const name = fieldNamed(e.problem?.detail);
      if (name) showError(name, describe(e));
      else {
        formErr.textContent = describe(e);
        formErr.hidden = false;
      }
    } finally {
      button.disabled = false;
    }
  }

  function showError(name, text) {
    const box = form.querySelector(`#f-${name}-error`);
    const input = form.querySelector(`#f-${name}`);
    box.textContent = text;
    box.hidden = false;
    input.setAttribute("aria-invalid", "true");
    input.closest("details")?.setAttribute("open", "");
    input.focus();
  }
}

export function progressText(p, epochs) {
  if (!p) return "";
  if (p.phase === "features") return `computing features ${fmtNum(p.done)} / ${fmtNum(p.total)}`;
  if (p.phase === "caching") return `decoding images once into the input cache ${fmtNum(p.done)} / ${fmtNum(p.total)}`;
  const parts = [];
  if (p.epoch) parts.push(`epoch ${p.epoch}${epochs ? ` / ${epochs}` : ""}`);
  if (p.step !== undefined && p.total_steps) parts.push(`step ${p.step} / ${p.total_steps}`);
  if (p.eta_secs !== undefined) parts.push(`ETA ${fmtDuration(p.eta_secs)}`);
  return parts.join(" · ");
}

export function progressFraction(job) {
  const p = job.progress;
  if (job.status === "succeeded") return 1;
  if (!p) return 0;
  if ((p.phase === "features" || p.phase === "caching") && p.total) return 0;
  return p.total_steps ? p.step / p.total_steps : 0;
}

export async function renderList(main) {
  let timer = null;
  let stopped = false;
  const box = h("div", {}, h("p", { class: "muted" }, "Loading…"));
  mount(main, h("div", { class: "title-row" }, h("h1", {}, "Jobs"), h("a", { class: "button primary", href: "#/jobs/new", id: "new-job" }, "New job")), box);
  async function load() {
    let jobs;
    try {
      jobs = await api("/jobs?limit=100");
    } catch (e) {
      mount(box, h("div", { class: "error", role: "alert" }, describe(e)));
      if (!stopped) timer = setTimeout(load, 5000);
      return;
    }
    mount(box, jobs.length ? h("div", { class: "table-scroll" }, h("table", { class: "list", id: "jobs-table" },
      h("thead", {}, h("tr", {}, ["Job", "Status", "Base model", "Mode", "Progress", "Best", "Created"].map((t) => h("th", { scope: "col" }, t)))),
      h("tbody", {}, jobs.map((j) => {
        const best = bestOf(j.metrics || []);
        return h("tr", { "data-job": j.id },
          h("td", {}, h("a", { href: `#/jobs/${j.id}` }, shortId(j.id))),
          h("td", {}, badge(j.status)),
          h("td", { class: "clip", title: j.config?.base_model }, baseName(j.config?.base_model)),
          h("td", {}, j.config?.mode || "linear_probe"),
          h("td", {}, h("progress", { max: 1, value: progressFraction(j), "aria-label": `Progress of job ${shortId(j.id)}` }),
            " ", h("span", { class: "muted" }, TERMINAL.includes(j.status) ? `${(j.metrics || []).length} epochs` : progressText(j.progress, j.config?.epochs))),
          h("td", {}, best ? `${best.name} ${fmtNum(best.value)}` : "–"),
          h("td", {}, fmtTime(j.created_at)));
      }))))
      : h("p", { class: "muted" }, "No job yet. ", h("a", { href: "#/jobs/new" }, "Start one.")));
    if (!stopped && jobs.some((j) => !TERMINAL.includes(j.status))) timer = setTimeout(load, 2000);
  }
  await load();
  return () => { stopped = true; clearTimeout(timer); };
}

export function baseName(path) {
  if (!path) return "–";
  const parts = String(path).split("/").filter(Boolean);
  return parts.length > 2 ? `…/${parts.slice(-2).join("/")}` : path;
}

/** The headline validation metric of an epoch: accuracy or mAP. */
export function headline(v) {
  if (!v) return null;
  if (v.accuracy !== undefined) return { name: "accuracy", value: v.accuracy };
  if (v.map !== undefined) return { name: "mAP", value: v.map };
  return null;
}

export function bestOf(metrics) {
  let best = null;
  for (const m of metrics) {
    const x = headline(m.validation);
    if (x && (!best || x.value > best.value)) best = { ...x, epoch: m.epoch };
  }
  return best;
}
