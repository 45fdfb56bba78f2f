// Small DOM helpers: element building without innerHTML (so text from the
// server is never parsed as markup), and number/time formatting.

/** h("div", {class: "x", onclick: f}, child, "text", [more]) */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  setAttrs(el, attrs);
  append(el, children);
  return el;
}

const SVG_NS = "http://www.w3.org/2000/svg";

/** An SVG element, as h() builds HTML ones. */
export function s(tag, attrs = {}, ...children) {
  const el = document.createElementNS(SVG_NS, tag);
  setAttrs(el, attrs);
  append(el, children);
  return el;
}

function setAttrs(el, attrs) {
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on") && typeof v === "function") {
      el.addEventListener(k.slice(2), v);
    } else if (k === "dataset") {
      Object.assign(el.dataset, v);
    } else if (k === "style" && typeof v === "object") {
      Object.assign(el.style, v);
    } else if (k === "value" && "value" in el) {
      el.value = v;
    } else if (k === "checked" && "checked" in el) {
      el.checked = !!v;
    } else {
      el.setAttribute(k, v === true ? "" : String(v));
    }
  }
}

function append(el, children) {
  for (const c of children.flat(Infinity)) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : String(c));
  }
}

/** Replaces the children of `el`. */
export function mount(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

export function fmtNum(x, digits = 3) {
  if (x === undefined || x === null || Number.isNaN(x)) return "–";
  if (typeof x !== "number") return String(x);
  if (Number.isInteger(x)) return x.toLocaleString("en");
  return x.toFixed(digits);
}

export function fmtPct(x) {
  if (x === undefined || x === null || Number.isNaN(x)) return "–";
  return (100 * x).toFixed(1) + "%";
}

export function fmtBytes(n) {
  if (n === undefined || n === null) return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return `${i === 0 ? n : n.toFixed(1)} ${units[i]}`;
}

export function fmtDuration(secs) {
  if (secs === undefined || secs === null || !Number.isFinite(secs)) return "–";
  secs = Math.max(0, Math.round(secs));
  const hh = Math.floor(secs / 3600), mm = Math.floor((secs % 3600) / 60), ss = secs % 60;
  if (hh) return `${hh} h ${mm} min`;
  if (mm) return `${mm} min ${ss} s`;
  return `${ss} s`;
}

export function fmtTime(iso) {
  if (!iso) return "–";
  const d = new Date(iso);
  return Number.isNaN(d.getTime()) ? iso : d.toLocaleString();
}

/**
 * The last characters of an id, enough to tell ids apart on screen (ids are
 * UUIDv7: their first characters are a timestamp, alike for ids made
 * within the same minute).
 */
export function shortId(id) {
  return id ? String(id).slice(-8) : "–";
}

/** A status word as a coloured badge. */
export function badge(status) {
  return h("span", { class: `badge badge-${status}`, "data-status": status }, status);
}

/** A readable message for an error (a problem document or a network error). */
export function errorBox(err, attrs = {}) {
  return h("div", { class: "error", role: "alert", ...attrs }, describe(err));
}

export function describe(err) {
  if (!err) return "";
  if (err.problem) {
    const p = err.problem;
    return `${p.detail || p.title || "Error"}${p.code ? ` (${p.code})` : ""}`;
  }
  return err.message || String(err);
}

/** A definition list of [term, value] pairs. */
export function facts(pairs) {
  return h("dl", { class: "facts" },
    pairs.filter(Boolean).map(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]));
}

/** A random id for Idempotency-Key (crypto.randomUUID needs a secure context). */
export function randomKey() {
  const b = new Uint8Array(16);
  crypto.getRandomValues(b);
  return Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
}
