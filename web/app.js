// The page's shell: hash routes, the navigation, the token gate, and the
// connection indicator. Each page module exports render(main, route) which
// may return a function that stops its timers and streams when the page
// is left.

import { h, mount, describe } from "./dom.js";
import { api, setToken, token, ApiError } from "./api.js";
import * as datasets from "./pages/datasets.js";
import * as jobs from "./pages/jobs.js";
import * as job from "./pages/job.js";
import * as models from "./pages/models.js";
import * as predict from "./pages/predict.js";
import * as sweeps from "./pages/sweeps.js";

const main = document.getElementById("main");
let cleanup = null;
let asking = false;

/** "#/jobs/abc?x=1" -> {parts: ["jobs", "abc"], query: URLSearchParams} */
function parseHash() {
  const raw = location.hash.replace(/^#\/?/, "");
  const [path, q = ""] = raw.split("?");
  return { parts: path.split("/").filter(Boolean).map(decodeURIComponent), query: new URLSearchParams(q) };
}

function pageFor(route) {
  const [section = "datasets", id] = route.parts;
  switch (section) {
    case "datasets": return id ? [datasets.renderOne, "datasets"] : [datasets.renderList, "datasets"];
    case "jobs":
      if (id === "new") return [jobs.renderForm, "jobs"];
      return id ? [job.render, "jobs"] : [jobs.renderList, "jobs"];
    case "models": return id ? [models.renderOne, "models"] : [models.renderList, "models"];
    case "predict": return [predict.render, "predict"];
    case "sweeps": return id ? [sweeps.renderOne, "sweeps"] : [sweeps.renderList, "sweeps"];
    default: return [notFound, ""];
  }
}

function notFound(el) {
  mount(el, h("h1", {}, "Not found"), h("p", {}, "No such page. ", h("a", { href: "#/datasets" }, "Go to the datasets.")));
}

async function route(ev) {
  if (asking) return;
  const navigated = ev?.type === "hashchange";
  if (cleanup) { try { cleanup(); } catch (_) { /* ignore */ } cleanup = null; }
  const r = parseHash();
  const [render, section] = pageFor(r);
  for (const a of document.querySelectorAll("[data-nav]")) {
    if (a.dataset.nav === section) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  mount(main, h("p", { class: "muted" }, "Loading…"));
  try {
    const c = await render(main, r);
    if (typeof c === "function") cleanup = c;
    // Tell assistive technology where it is: the page's heading as the
    // title, and focus on the new content after a navigation.
    const title = main.querySelector("h1")?.textContent?.trim();
    document.title = title ? `${title} · vitrine` : "vitrine";
    if (navigated) main.focus({ preventScroll: true });
  } catch (e) {
    if (e instanceof ApiError && e.status === 401) return; // the token form takes over
    mount(main, h("h1", {}, "Something went wrong"), h("div", { class: "error", role: "alert" }, describe(e)),
      h("p", {}, h("button", { type: "button", onclick: route }, "Try again")));
  }
}

/** The token form: shown when the API answers 401. */
function askToken(hadToken, message) {
  if (cleanup) { try { cleanup(); } catch (_) { /* ignore */ } cleanup = null; }
  asking = true;
  const input = h("input", { id: "token", name: "token", type: "password", autocomplete: "current-password",
    required: true, "aria-describedby": "token-help token-error" });
  const err = h("p", { id: "token-error", class: "error field-error", role: "alert" },
    message || (hadToken ? "The server refused this token. Enter it again." : ""));
  if (!err.textContent) err.hidden = true;
  const form = h("form", { id: "token-form", class: "card narrow", onsubmit: submit },
    h("h1", {}, "API token"),
    h("p", { id: "token-help" }, "This vitrine server was started with --api-token. Enter the token to use the page; it is kept in this tab only (sessionStorage)."),
    h("label", { for: "token" }, "Token"), input, err,
    h("button", { type: "submit", class: "primary" }, "Continue"));
  mount(main, form);
  input.focus();

  async function submit(ev) {
    ev.preventDefault();
    setToken(input.value.trim());
    err.hidden = true;
    try {
      await api("/datasets?limit=1");
    } catch (e) {
      if (e instanceof ApiError && e.status === 401) {
        setToken("");
        err.textContent = "That token was not accepted (401 unauthorized). Check it and try again.";
        err.hidden = false;
        input.select();
        input.focus();
        return;
      }
      err.textContent = describe(e);
      err.hidden = false;
      return;
    }
    asking = false;
    document.getElementById("forget-token")?.removeAttribute("hidden");
    route();
  }
}

window.addEventListener("vitrine:unauthorized", (e) => {
  if (asking) return;
  const hadToken = e.detail?.hadToken;
  setToken("");
  askToken(hadToken);
});

document.getElementById("forget-token")?.addEventListener("click", () => {
  setToken("");
  location.reload();
});

document.getElementById("skip")?.addEventListener("click", (e) => {
  e.preventDefault();
  main.focus();
});

window.addEventListener("hashchange", route);
if (!location.hash) history.replaceState(null, "", "#/datasets");
if (token()) document.getElementById("forget-token")?.removeAttribute("hidden");
route();
