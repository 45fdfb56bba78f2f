// Charts as SVG, drawn here (no library): line charts for the training
// curves, grouped bars for class counts, a heat map for the confusion
// matrix. Each mark carries data-* attributes with its numbers, which the
// browser tests read and screen readers get through <title>.

import { h, s, fmtNum } from "./dom.js";

/** About `n` round tick values covering [lo, hi]. */
export function ticks(lo, hi, n = 5) {
  if (!(hi > lo)) hi = lo + 1;
  const raw = (hi - lo) / n;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((m) => m >= raw) || raw;
  const out = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) {
    out.push(Number(v.toPrecision(12)));
  }
  return out;
}

/**
 * The width in pixels a chart gets in the page: the main column, or one of
 * `columns` side by side (one column at phone width). Drawing the SVG at
 * its real width keeps its text at the page's size.
 */
export function widthFor(columns = 1) {
  const main = document.getElementById("main");
  const inner = (main?.clientWidth || 1000) - 32;
  const col = window.innerWidth > 720 ? (inner - 16 * (columns - 1)) / columns : inner;
  return Math.max(280, Math.round(col - 40));
}

/**
 * A line chart. series: [{name, points: [[x, y], ...], cls}]. Options:
 * xLabel, yLabel, yMin, yMax, id, dots (draw points; default true).
 */
export function lineChart({ id, title, series, xLabel = "", yLabel = "", yMin, yMax, dots = true, integerX = false,
  width = widthFor(1), empty = "No points yet." }) {
  const W = width, H = 240, L = 56, R = 12, T = 12, B = 40;
  const all = series.flatMap((se) => se.points.filter(([x, y]) => Number.isFinite(x) && Number.isFinite(y)));
  const svg = s("svg", {
    viewBox: `0 0 ${W} ${H}`, class: "chart line-chart", role: "img",
    "aria-label": title, id, "data-points": all.length,
  });
  svg.append(s("title", {}, title));
  if (!all.length) {
    svg.append(s("text", { x: W / 2, y: H / 2, class: "empty", "text-anchor": "middle" }, empty));
    return figure(title, svg, series);
  }
  let x0 = Math.min(...all.map((p) => p[0])), x1 = Math.max(...all.map((p) => p[0]));
  if (x1 === x0) { x0 -= 1; x1 += 1; }
  let y0 = yMin ?? Math.min(...all.map((p) => p[1])), y1 = yMax ?? Math.max(...all.map((p) => p[1]));
  if (y1 === y0) {
    const d = Math.abs(y0) / 2 || 1;
    y0 -= d;
    y1 += d;
  }
  // Start at zero when the values are closer to it than to each other.
  if (yMin === undefined && y0 > 0 && y0 < (y1 - y0)) y0 = 0;
  const px = (x) => L + ((x - x0) / (x1 - x0)) * (W - L - R);
  const py = (y) => T + (1 - (y - y0) / (y1 - y0)) * (H - T - B);

  const grid = s("g", { class: "grid" });
  for (const t of ticks(y0, y1, 5)) {
    if (t < y0 - 1e-12 || t > y1 + 1e-12) continue;
    grid.append(s("line", { x1: L, x2: W - R, y1: py(t), y2: py(t) }));
    grid.append(s("text", { x: L - 6, y: py(t) + 4, "text-anchor": "end" }, fmtNum(t, 3)));
  }
  const xt = ticks(x0, x1, Math.max(2, Math.min(8, Math.floor(W / 80)))).filter((t) => !integerX || Number.isInteger(t));
  for (const t of xt) {
    if (t < x0 || t > x1) continue;
    grid.append(s("text", { x: px(t), y: H - B + 16, "text-anchor": "middle" }, fmtNum(t, 1)));
  }
  grid.append(s("text", { x: (L + W - R) / 2, y: H - 6, "text-anchor": "middle", class: "axis-label" }, xLabel));
  grid.append(s("text", { x: 12, y: (T + H - B) / 2, "text-anchor": "middle", class: "axis-label",
    transform: `rotate(-90 12 ${(T + H - B) / 2})` }, yLabel));
  svg.append(grid);
  svg.append(s("line", { x1: L, x2: L, y1: T, y2: H - B, class: "axis" }));
  svg.append(s("line", { x1: L, x2: W - R, y1: H - B, y2: H - B, class: "axis" }));

  series.forEach((se, i) => {
    const pts = se.points.filter(([x, y]) => Number.isFinite(x) && Number.isFinite(y));
    const cls = se.cls || `series-${i}`;
    const g = s("g", { class: `series ${cls}`, "data-series": se.name, "data-points": pts.length });
    if (pts.length > 1) {
      g.append(s("polyline", { points: pts.map(([x, y]) => `${px(x).toFixed(1)},${py(y).toFixed(1)}`).join(" ") }));
    }
    if (dots || pts.length === 1) {
      for (const [x, y] of pts) {
        g.append(s("circle", { cx: px(x).toFixed(1), cy: py(y).toFixed(1), r: 3.5, class: "pt", "data-x": x, "data-y": y },
          s("title", {}, `${se.name}: ${fmtNum(y, 4)} at ${fmtNum(x, 2)}`)));
      }
    }
    svg.append(g);
  });
  return figure(title, svg, series);
}

function figure(title, svg, series) {
  const legend = h("ul", { class: "legend" },
    series.map((se, i) => h("li", { class: se.cls || `series-${i}` }, h("span", { class: "swatch", "aria-hidden": "true" }), se.name)));
  return h("figure", { class: "chart-box" }, h("figcaption", {}, title), svg, legend);
}

/**
 * Horizontal grouped bars: one row per category, one bar per group.
 * groups: [{name, values: {category: count}}].
 */
export function barChart({ id, title, categories, groups, width = widthFor(1) }) {
  const W = width, L = Math.min(140, Math.round(width / 3)), R = 44, T = 8, barH = 14, gap = 10;
  const rowH = groups.length * barH + gap;
  const H = T + categories.length * rowH + 24;
  const max = Math.max(1, ...groups.flatMap((g) => categories.map((c) => g.values[c] || 0)));
  const svg = s("svg", { viewBox: `0 0 ${W} ${H}`, class: "chart bar-chart", role: "img", "aria-label": title, id });
  svg.append(s("title", {}, title));
  const px = (v) => ((W - L - R) * v) / max;
  categories.forEach((c, ci) => {
    const y = T + ci * rowH;
    const fit = Math.floor(L / 8);
    const label = c.length > fit ? c.slice(0, fit - 1) + "…" : c;
    svg.append(s("text", { x: L - 8, y: y + (groups.length * barH) / 2 + 4, "text-anchor": "end", class: "cat" },
      s("title", {}, c), label));
    groups.forEach((g, gi) => {
      const v = g.values[c] || 0;
      const by = y + gi * barH;
      svg.append(s("rect", {
        x: L, y: by, width: Math.max(px(v), v ? 1 : 0), height: barH - 2, class: `bar series-${gi}`,
        "data-label": c, "data-split": g.name, "data-count": v,
      }, s("title", {}, `${c}, ${g.name}: ${v}`)));
      svg.append(s("text", { x: L + px(v) + 4, y: by + barH - 4, class: "val" }, String(v)));
    });
  });
  for (const t of ticks(0, max, 4)) {
    if (t > max) continue;
    svg.append(s("text", { x: L + px(t), y: H - 6, "text-anchor": "middle", class: "tick" }, fmtNum(t)));
  }
  const legend = h("ul", { class: "legend" },
    groups.map((g, i) => h("li", { class: `series-${i}` }, h("span", { class: "swatch", "aria-hidden": "true" }), g.name)));
  return h("figure", { class: "chart-box" }, h("figcaption", {}, title), svg, legend);
}

/**
 * The confusion matrix as a table heat map (rows: true class, columns:
 * predicted), each cell shaded by its share of its row.
 */
export function heatmap({ id, title, labels, matrix, epoch }) {
  const head = h("tr", {}, h("th", { scope: "col", class: "corner" }, "true ↓ / predicted →"),
    labels.map((l) => h("th", { scope: "col", title: l }, l)));
  const rows = matrix.map((row, i) => {
    const total = row.reduce((a, b) => a + b, 0) || 1;
    return h("tr", {}, h("th", { scope: "row", title: labels[i] }, labels[i]),
      row.map((n, j) => {
        const share = n / total;
        const cell = h("td", {
          class: i === j ? "diag" : "off",
          "data-row": i, "data-col": j, "data-count": n,
          title: `true ${labels[i]}, predicted ${labels[j]}: ${n} (${(100 * share).toFixed(0)}% of the row)`,
        }, String(n));
        const hue = i === j ? 150 : 8;
        cell.style.background = n ? `hsl(${hue} 70% ${96 - 46 * share}%)` : "";
        if (share > 0.6) cell.style.color = "#fff";
        return cell;
      }));
  });
  return h("figure", { class: "chart-box heatmap-box" },
    h("figcaption", {}, title),
    h("div", { class: "table-scroll" },
      h("table", { class: "heatmap", id, "data-epoch": epoch }, h("thead", {}, head), h("tbody", {}, rows))));
}

/** A horizontal bar for a score in [0, 1], with its number. */
export function scoreBar(score, label) {
  const pct = Math.max(0, Math.min(1, score || 0)) * 100;
  return h("div", { class: "scorebar", role: "meter", "aria-valuemin": 0, "aria-valuemax": 1,
    "aria-valuenow": score, "aria-label": label },
  h("span", { class: "fill", style: { width: `${pct.toFixed(1)}%` } }),
  h("span", { class: "num" }, (score ?? 0).toFixed(3)));
}

/** The phases of a training job's time, in the order they are drawn. */
export const PHASES = [
  ["input_wait", "waiting for input"],
  ["compute", "forward + backward"],
  ["optimizer", "optimiser"],
  ["eval", "evaluation"],
  ["checkpoint", "checkpoints"],
];

/** Adds up the epochs' `time_shares` (null when none was measured). */
export function totalShares(metrics) {
  const total = { wall: 0 };
  for (const [k] of PHASES) total[k] = 0;
  let any = false;
  for (const m of metrics || []) {
    const s = m.time_shares;
    if (!s || !s.wall) continue;
    any = true;
    for (const k of Object.keys(total)) total[k] += s[k] || 0;
  }
  return any ? total : null;
}

/** A stacked bar of where a job's wall time went, with a legend. */
export function timeSharesBar({ id, title, shares }) {
  const wall = Math.max(shares.wall, 1e-9);
  const other = Math.max(0, wall - PHASES.reduce((a, [k]) => a + shares[k], 0));
  const parts = [...PHASES.map(([k, name]) => [k, name, shares[k]]), ["other", "other", other]]
    .filter(([, , v]) => v > 0);
  const pct = (v) => `${((100 * v) / wall).toFixed(1)}%`;
  return h("figure", { class: "chart-box shares-box" },
    h("figcaption", {}, title),
    h("div", { class: "shares", id, role: "img",
      "aria-label": parts.map(([, name, v]) => `${name} ${pct(v)}`).join(", ") },
    ...parts.map(([k, name, v]) => h("span", { class: `share share-${k}`, title: `${name}: ${v.toFixed(2)} s (${pct(v)})`,
      "data-phase": k, style: { width: pct(v) } }))),
    h("ul", { class: "legend" }, ...parts.map(([k, name, v]) =>
      h("li", {}, h("span", { class: `swatch share-${k}` }), ` ${name} ${pct(v)}`))));
}
