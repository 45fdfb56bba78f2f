// Predict: drop or pick an image, choose a model or alias, see the ranked
// labels with score bars; then explain them: a heat map over the image per
// label, by the method picked (POST /explain).

import { h, mount, shortId, errorBox } from "../dom.js";
import { api, request } from "../api.js";
import { scoreBar } from "../charts.js";

export async function render(main, route) {
  const models = await api("/models?limit=200");
  const aliases = [...new Set(models.flatMap((m) => m.aliases))].sort();
  const wanted = route.query.get("model") || "";
  const select = h("select", { id: "predict-model", name: "model", "aria-describedby": "predict-model-help" },
    h("option", { value: "" }, "default (production alias, else the newest model)"),
    aliases.length ? h("optgroup", { label: "Aliases" }, aliases.map((a) => h("option", { value: a, selected: a === wanted }, a))) : null,
    h("optgroup", { label: "Models" }, models.map((m) => h("option", { value: m.id, selected: m.id === wanted },
      `${shortId(m.id)} · ${m.labels.length} labels${m.aliases.length ? ` · ${m.aliases.join(", ")}` : ""}`))));
  const file = h("input", { id: "predict-file", name: "image", type: "file", accept: "image/*", "aria-describedby": "predict-help predict-error" });
  const topK = h("input", { id: "predict-topk", name: "top_k", type: "number", min: 1, max: 100, value: 5 });
  const method = h("select", { id: "explain-method", name: "method", "aria-describedby": "explain-method-help" },
    h("option", { value: "" }, "the model's default"),
    h("option", { value: "gradcam" }, "Grad-CAM (ConvNeXt, ResNet, Swin)"),
    h("option", { value: "attention_rollout" }, "attention rollout (ViT, DINOv2)"),
    h("option", { value: "integrated_gradients" }, "integrated gradients (any)"));
  const explanations = h("section", { id: "explanations", "aria-live": "polite" });
  let lastLabels = [];
  const preview = h("img", { id: "predict-preview", alt: "The chosen image", hidden: true });
  const err = h("div", { id: "predict-error", class: "error field-error", role: "alert", hidden: true });
  const results = h("section", { id: "predict-results", "aria-live": "polite" });
  const drop = h("div", { class: "dropzone", id: "predict-drop" },
    h("label", { for: "predict-file" }, "Image"), file,
    h("p", { id: "predict-help", class: "help" }, "JPEG, PNG, WebP, BMP, GIF or TIFF. Drop it here or pick it."));
  const form = h("form", { id: "predict-form", class: "card", onsubmit: (e) => { e.preventDefault(); run(); } },
    h("div", { class: "field" }, h("label", { for: "predict-model" }, "Model or alias"), select,
      h("small", { id: "predict-model-help", class: "help" }, "Any model id or alias.")),
    drop,
    h("div", { class: "field" }, h("label", { for: "predict-topk" }, "Top k"), topK),
    h("button", { type: "submit", class: "primary", id: "predict-button" }, "Predict"),
    h("div", { class: "field" }, h("label", { for: "explain-method" }, "Explain with"), method,
      h("small", { id: "explain-method-help", class: "help" }, "A heat map per predicted label: where the model looked.")),
    h("button", { type: "button", id: "explain-button", onclick: () => explain() }, "Explain the top labels"), err);
  mount(main, h("h1", {}, "Predict"),
    models.length ? null : h("p", { class: "muted" }, "No model yet: train one first."),
    h("div", { class: "grid2" }, form, h("div", { class: "card" }, preview, results, explanations)));

  let previewUrl = null;
  function showPreview() {
    const f = file.files[0];
    if (!f) return;
    if (previewUrl) URL.revokeObjectURL(previewUrl);
    previewUrl = URL.createObjectURL(f);
    preview.src = previewUrl;
    preview.hidden = false;
    // Small images (icons, dataset-sized crops) are shown enlarged, crisp.
    preview.onload = () => preview.classList.toggle("small", preview.naturalWidth < 160);
  }
  file.addEventListener("change", () => { showPreview(); run(); });
  for (const t of ["dragenter", "dragover"]) drop.addEventListener(t, (e) => { e.preventDefault(); drop.classList.add("over"); });
  for (const t of ["dragleave", "drop"]) drop.addEventListener(t, () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    if (e.dataTransfer?.files?.length) {
      file.files = e.dataTransfer.files;
      showPreview();
      run();
    }
  });

  async function run() {
    err.hidden = true;
    const f = file.files[0];
    if (!f) {
      err.textContent = "Choose an image first.";
      err.hidden = false;
      return;
    }
    const model = select.value;
    const path = model ? `/models/${encodeURIComponent(model)}/predict` : "/predict";
    const fd = new FormData();
    fd.append("image", f, f.name);
    mount(results, h("p", { class: "muted" }, "Predicting…"));
    try {
      const resp = await request(`${path}?top_k=${encodeURIComponent(topK.value || 5)}`, { method: "POST", body: fd });
      const answer = await resp.json();
      const preds = answer.predictions || [];
      lastLabels = preds.slice(0, 3).map((p) => p.label);
      mount(explanations);
      mount(results, h("h2", {}, "Labels"),
        h("p", { class: "muted" }, "Model ", h("a", { href: `#/models/${answer.model}`, id: "predict-model-used" }, shortId(answer.model))),
        h("ol", { class: "ranked", id: "predictions" }, preds.map((p) => h("li", { "data-label": p.label, "data-score": p.score },
          h("span", { class: "label" }, p.label), scoreBar(p.score, `score of ${p.label}`)))));
    } catch (e) {
      mount(results);
      err.replaceChildren(h("strong", {}, `${f.name}: `), errorBox(e).textContent);
      err.hidden = false;
    }
  }
  // Explanations of the (up to) three best labels, one overlay each.
  async function explain() {
    err.hidden = true;
    const f = file.files[0];
    if (!f || !lastLabels.length) {
      err.textContent = "Predict an image first.";
      err.hidden = false;
      return;
    }
    const model = select.value;
    const path = model ? `/models/${encodeURIComponent(model)}/explain` : "/explain";
    const query = new URLSearchParams({ labels: lastLabels.join(",") });
    if (method.value) query.set("method", method.value);
    const fd = new FormData();
    fd.append("image", f, f.name);
    mount(explanations, h("p", { class: "muted" }, "Explaining…"));
    try {
      const answer = await (await request(`${path}?${query}`, { method: "POST", body: fd })).json();
      mount(explanations, h("h2", {}, "Why"),
        h("p", { class: "muted" }, `By ${answer.method.replaceAll("_", " ")}, at the model's input size (${answer.width}×${answer.height})`,
          answer.method === "attention_rollout" ? "; rollout follows the CLS token, so every label has the same map." : "."),
        h("div", { class: "overlays", id: "explain-overlays" }, answer.explanations.map((e) =>
          h("figure", { "data-label": e.label },
            h("img", { src: e.overlay_png, alt: `Heat map of ${e.label} over the image`, width: 160, height: 160 }),
            h("figcaption", {}, `${e.label} (${(100 * e.score).toFixed(1)}%)`)))));
    } catch (e) {
      mount(explanations);
      err.replaceChildren(h("strong", {}, "Explain: "), errorBox(e).textContent);
      err.hidden = false;
    }
  }
  return () => { if (previewUrl) URL.revokeObjectURL(previewUrl); };
}
