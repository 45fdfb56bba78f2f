// Datasets: upload (with a progress bar), the list, and one dataset's
// summary: class counts per split, sample images, skipped files, warnings.

import { h, mount, fmtNum, fmtBytes, fmtTime, shortId, facts, errorBox, describe, badge } from "../dom.js";
import { api, upload, blobUrl, ApiError } from "../api.js";
import { barChart } from "../charts.js";

export async function renderList(main) {
  const fileInput = h("input", { type: "file", id: "dataset-file", name: "dataset",
    accept: ".zip,.tar,.tgz,.gz,.bz2,.tbz2,.parquet,application/zip,application/x-tar,application/gzip,application/vnd.apache.parquet",
    "aria-describedby": "dataset-help dataset-error" });
  const progress = h("progress", { id: "upload-progress", max: 1, value: 0, hidden: true, "aria-label": "Upload progress" });
  const progressText = h("span", { id: "upload-progress-text", class: "muted", "aria-live": "polite" });
  const err = h("div", { id: "dataset-error", class: "error field-error", role: "alert", hidden: true });
  const button = h("button", { type: "submit", class: "primary", id: "upload-button" }, "Upload");
  const drop = h("div", { class: "dropzone", id: "dataset-drop" },
    h("label", { for: "dataset-file" }, "Archive (zip, tar, tar.gz or tar.bz2) or Parquet file"),
    fileInput,
    h("p", { id: "dataset-help", class: "help" },
      "Imagefolder layout: train/<label>/<image> (optionally validation/ and test/), <label>/<image>, or images with metadata.csv / metadata.jsonl; or a Hugging Face Parquet dataset. You can also drop the file here."));
  const form = h("form", { id: "upload-form", class: "card", onsubmit: submit },
    h("h2", {}, "Upload a dataset"), drop, h("div", { class: "row" }, button, progress, progressText), err);

  for (const t of ["dragenter", "dragover"]) {
    drop.addEventListener(t, (e) => { e.preventDefault(); drop.classList.add("over"); });
  }
  for (const t of ["dragleave", "drop"]) drop.addEventListener(t, () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    if (e.dataTransfer?.files?.length) {
      fileInput.files = e.dataTransfer.files;
    }
  });

  async function submit(ev) {
    ev.preventDefault();
    err.hidden = true;
    const file = fileInput.files[0];
    if (!file) {
      err.textContent = "Choose an archive first.";
      err.hidden = false;
      fileInput.focus();
      return;
    }
    const fd = new FormData();
    fd.append("dataset", file, file.name);
    button.disabled = true;
    progress.hidden = false;
    progress.value = 0;
    progressText.textContent = "Uploading…";
    try {
      const record = await upload("/datasets", fd, (sent, total) => {
        progress.max = total;
        progress.value = sent;
        progressText.textContent = sent < total
          ? `Uploading ${fmtBytes(sent)} of ${fmtBytes(total)}`
          : "Uploaded; checking the images…";
      });
      // The server answers once the upload is stored and checks the images
      // in the background: follow it here, so that a refusal is shown
      // beside the file, and open the dataset once it is ready.
      let d = record;
      while (pending(d)) {
        const p = d.progress;
        if (p && p.images_total) {
          progress.max = p.images_total;
          progress.value = p.images_checked || 0;
          progressText.textContent = `Checking images: ${fmtNum(p.images_checked || 0)} of ${fmtNum(p.images_total)}`
            + (p.eta_seconds != null ? `, about ${Math.ceil(p.eta_seconds)} s left` : "");
        } else {
          progressText.textContent = "Uploaded; extracting…";
        }
        await new Promise((r) => setTimeout(r, 500));
        d = await api(`/datasets/${encodeURIComponent(d.id)}`);
      }
      if (d.status === "failed") {
        throw new ApiError(d.error?.status || 422, d.error || { detail: "The dataset was refused." });
      }
      progressText.textContent = "Done.";
      location.hash = `#/datasets/${d.id}`;
    } catch (e) {
      progress.hidden = true;
      progressText.textContent = "";
      err.replaceChildren(h("strong", {}, `${file.name}: `), describe(e));
      err.hidden = false;
      fileInput.focus();
    } finally {
      button.disabled = false;
    }
  }

  const listBox = h("section", { "aria-labelledby": "datasets-title" }, h("h2", { id: "datasets-title" }, "Datasets"), h("p", { class: "muted" }, "Loading…"));
  mount(main, h("h1", {}, "Datasets"), form, listBox);
  const { datasets } = await api("/datasets?limit=200");
  mount(listBox, h("h2", { id: "datasets-title" }, "Datasets"),
    datasets.length ? table(datasets) : h("p", { class: "muted" }, "No dataset yet: upload one above."));
}

function table(datasets) {
  return h("div", { class: "table-scroll" }, h("table", { class: "list", id: "datasets-table" },
    h("thead", {}, h("tr", {}, ["Dataset", "Status", "Task", "Classes", "Images", "Size", "Uploaded"].map((t) => h("th", { scope: "col" }, t)))),
    h("tbody", {}, datasets.map((d) => h("tr", {},
      h("td", {}, h("a", { href: `#/datasets/${d.id}` }, shortId(d.id))),
      h("td", {}, badge(d.status || "ready")),
      h("td", {}, d.task ?? d.counts?.task ?? "–"),
      h("td", {}, fmtNum(d.counts?.labels)),
      h("td", {}, fmtNum(d.counts?.images)),
      h("td", {}, fmtBytes(d.size_bytes)),
      h("td", {}, fmtTime(d.created_at)))))));
}

/** A dataset whose record says it is still being checked (issue 17's async upload). */
function pending(d) {
  return d.status === "validating" || d.status === "pending" || d.status === "queued";
}

export async function renderOne(main, route) {
  const id = route.parts[1];
  let timer = null;
  let stopped = false;
  const urls = [];
  const ctl = new AbortController();

  let d = await api(`/datasets/${encodeURIComponent(id)}`);
  while (pending(d) && !stopped) {
    mount(main, h("h1", {}, `Dataset ${shortId(id)}`),
      h("div", { class: "card", id: "dataset-validating" }, badge(d.status),
        h("p", {}, "The archive is being extracted and its images checked."),
        d.progress?.images_total
          ? h("progress", { max: d.progress.images_total, value: d.progress.images_checked || 0, "aria-label": "Checking progress" })
          : h("progress", { "aria-label": "Checking progress" }),
        d.progress?.images_total
          ? h("p", { class: "muted" }, `${fmtNum(d.progress.images_checked || 0)} of ${fmtNum(d.progress.images_total)} images checked`
            + (d.progress.eta_seconds != null ? `, about ${Math.ceil(d.progress.eta_seconds)} s left` : ""))
          : null));
    await new Promise((r) => { timer = setTimeout(r, 1000); });
    if (stopped) return;
    d = await api(`/datasets/${encodeURIComponent(id)}`);
  }
  const cleanup = () => {
    stopped = true;
    clearTimeout(timer);
    ctl.abort();
    urls.forEach((u) => URL.revokeObjectURL(u));
  };
  if (d.status === "failed") {
    mount(main, h("h1", {}, `Dataset ${shortId(id)}`), badge("failed"),
      errorBox({ problem: d.error || { detail: "The dataset was refused." } }, { id: "dataset-failed" }));
    return cleanup;
  }
  const sm = d.summary || {};
  const splits = Object.keys(sm.splits || {});
  const order = ["train", "validation", "test"];
  splits.sort((a, b) => order.indexOf(a) - order.indexOf(b));
  const size = sm.image_size
    ? `${sm.image_size.min_width}–${sm.image_size.max_width} × ${sm.image_size.min_height}–${sm.image_size.max_height} px`
    : "–";
  const thumbs = h("section", { id: "thumbnails", "aria-labelledby": "thumbs-title" }, h("h2", { id: "thumbs-title" }, "Sample images"), h("p", { class: "muted" }, "Loading…"));
  mount(main,
    h("h1", {}, `Dataset ${shortId(d.id)}`),
    h("p", {}, h("a", { class: "button primary", href: `#/jobs/new?dataset=${d.id}`, id: "train-this" }, "Train a model on it")),
    h("div", { class: "grid2" },
      h("section", { class: "card" }, h("h2", {}, "Summary"), facts([
        ["Id", h("code", {}, d.id)],
        ["Task", sm.task || d.task],
        ["Layout", sm.layout],
        ["Classes", fmtNum(sm.labels?.length)],
        ["Images", fmtNum(sm.images)],
        ...splits.map((sp) => [`  ${sp}`, fmtNum(sm.splits[sp].images)]),
        ["Image sizes", size],
        ["Archive", `${d.format}, ${fmtBytes(d.size_bytes)} (${fmtBytes(sm.extracted_bytes)} extracted)`],
        ["Uploaded", fmtTime(d.created_at)],
      ])),
      h("section", { class: "card" }, h("h2", {}, "Warnings"),
        sm.warnings?.length
          ? h("ul", { id: "dataset-warnings", class: "warnings" }, sm.warnings.map((w) => h("li", {}, w)))
          : h("p", { class: "muted", id: "dataset-warnings" }, "None."))),
    h("section", { class: "card" },
      barChart({
        id: "class-chart",
        title: "Images per class and split",
        categories: sm.labels || [],
        groups: splits.map((sp) => ({ name: sp, values: sm.splits[sp].per_label || {} })),
      }),
      splits.includes("validation") ? null : h("p", { class: "help" }, "No validation split: each job draws a seeded, stratified one from train (validation_fraction).")),
    thumbs,
    h("section", { class: "card" }, h("h2", {}, `Skipped files (${sm.skipped?.length || 0})`),
      sm.skipped?.length
        ? h("div", { class: "table-scroll" }, h("table", { class: "list", id: "skipped-table" },
          h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "File"), h("th", { scope: "col" }, "Why"))),
          h("tbody", {}, sm.skipped.map((x) => h("tr", {}, h("td", {}, h("code", {}, x.file)), h("td", {}, x.reason))))))
        : h("p", { class: "muted" }, "None.")),
    sm.duplicates_across_splits?.length
      ? h("section", { class: "card" }, h("h2", {}, "Duplicates across splits"),
        h("ul", {}, sm.duplicates_across_splits.map((g) => h("li", {}, g.join(" = ")))))
      : null);

  loadThumbnails(d.id, thumbs, urls, ctl.signal).catch((e) => {
    if (e.name !== "AbortError") mount(thumbs, h("h2", {}, "Sample images"), errorBox(e));
  });
  return cleanup;
}

async function loadThumbnails(id, box, urls, signal) {
  const t = await api(`/datasets/${id}/thumbnails?per_class=4`, { signal });
  const imgs = [];
  mount(box, h("h2", { id: "thumbs-title" }, "Sample images"),
    h("div", { class: "thumb-grid" }, t.classes.map((c) => h("div", { class: "thumb-class", "data-label": c.label },
      h("h3", {}, c.label),
      h("div", { class: "thumbs" }, c.images.map((im) => {
        const img = h("img", { alt: `${c.label}: ${im.file}`, title: im.file, width: 96, height: 96, loading: "lazy", "data-index": im.index });
        imgs.push([img, im.index]);
        return img;
      }))))));
  // A few at a time: the server decodes and shrinks each.
  const queue = imgs.slice();
  const worker = async () => {
    while (queue.length && !signal.aborted) {
      const [img, index] = queue.shift();
      try {
        const url = await blobUrl(`/datasets/${id}/images/${index}?size=96`, signal);
        urls.push(url);
        img.src = url;
        img.removeAttribute("width");
        img.removeAttribute("height");
      } catch (e) {
        if (e.name === "AbortError") return;
        img.alt = `${img.alt} (could not be loaded: ${describe(e)})`;
      }
    }
  };
  await Promise.all([worker(), worker(), worker(), worker()]);
}
