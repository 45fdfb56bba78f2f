// The API client: every call carries the token (kept in sessionStorage,
// never in a URL); errors come back as ApiError with the server's problem
// document; a 401 asks the app for the token (the "unauthorized" event).

const TOKEN_KEY = "vitrine.token";

export function token() {
  return sessionStorage.getItem(TOKEN_KEY) || "";
}

export function setToken(t) {
  if (t) sessionStorage.setItem(TOKEN_KEY, t);
  else sessionStorage.removeItem(TOKEN_KEY);
}

export function authHeaders(extra = {}) {
  const t = token();
  return t ? { ...extra, Authorization: `Bearer ${t}` } : { ...extra };
}

/** An answer that was not 2xx: `problem` is the server's problem document. */
export class ApiError extends Error {
  constructor(status, problem) {
    super(problem?.detail || `HTTP ${status}`);
    this.status = status;
    this.problem = problem;
  }
}

/** Raised when the server could not be reached at all. */
export class NetworkError extends Error {
  constructor(cause) {
    super("The server cannot be reached. Is vitrine running?");
    this.cause = cause;
  }
}

function unauthorized() {
  window.dispatchEvent(new CustomEvent("vitrine:unauthorized", { detail: { hadToken: !!token() } }));
}

async function problemOf(resp) {
  const text = await resp.text();
  try {
    const p = JSON.parse(text);
    if (p && typeof p === "object") return p;
  } catch (_) { /* not JSON */ }
  return { status: resp.status, title: resp.statusText, detail: text.slice(0, 300) || `HTTP ${resp.status}` };
}

/** fetch() with the token; throws ApiError / NetworkError. */
export async function request(path, { method = "GET", json, body, headers = {}, signal } = {}) {
  const h = authHeaders(headers);
  if (json !== undefined) {
    h["Content-Type"] = "application/json";
    body = JSON.stringify(json);
  }
  let resp;
  try {
    resp = await fetch(path, { method, headers: h, body, signal });
  } catch (e) {
    if (e.name === "AbortError") throw e;
    throw new NetworkError(e);
  }
  if (!resp.ok) {
    const problem = await problemOf(resp);
    if (resp.status === 401) unauthorized();
    throw new ApiError(resp.status, problem);
  }
  return resp;
}

/** GET (or another method) answering JSON. */
export async function api(path, opts) {
  const resp = await request(path, opts);
  if (resp.status === 204) return null;
  return resp.json();
}

/** An image (or any file) of the API as a blob: URL, fetched with the token. */
export async function blobUrl(path, signal) {
  const resp = await request(path, { signal });
  return URL.createObjectURL(await resp.blob());
}

/**
 * POST a form with upload progress (fetch has none): `onProgress(sent, total)`.
 * Resolves to the JSON answer; rejects with ApiError / NetworkError.
 */
export function upload(path, form, onProgress) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", path);
    for (const [k, v] of Object.entries(authHeaders())) xhr.setRequestHeader(k, v);
    xhr.upload.addEventListener("progress", (e) => {
      if (e.lengthComputable) onProgress?.(e.loaded, e.total);
    });
    xhr.addEventListener("load", () => {
      let parsed = null;
      try { parsed = JSON.parse(xhr.responseText); } catch (_) { /* not JSON */ }
      if (xhr.status >= 200 && xhr.status < 300) {
        resolve(parsed);
      } else {
        if (xhr.status === 401) unauthorized();
        reject(new ApiError(xhr.status, parsed || { detail: xhr.responseText || `HTTP ${xhr.status}` }));
      }
    });
    xhr.addEventListener("error", () => reject(new NetworkError()));
    xhr.addEventListener("abort", () => reject(new NetworkError()));
    xhr.send(form);
  });
}
