// Server-Sent Events over fetch(), so the stream carries the Authorization
// header (EventSource cannot send one, and the token never goes in a URL).
// A dropped connection is retried with a growing delay; `onState` tells the
// page whether it is live, reconnecting or closed.

import { authHeaders } from "./api.js";

/** Splits text/event-stream chunks into events ({event, data}). */
export class EventParser {
  constructor(onEvent) {
    this.onEvent = onEvent;
    this.buf = "";
    this.reset();
  }

  reset() {
    this.event = "";
    this.data = [];
  }

  push(chunk) {
    this.buf += chunk;
    let nl;
    while ((nl = this.buf.search(/\r\n|\r|\n/)) >= 0) {
      // A CR that ends the chunk may be the first half of a CRLF.
      if (this.buf[nl] === "\r" && nl === this.buf.length - 1) break;
      const line = this.buf.slice(0, nl);
      const len = this.buf.startsWith("\r\n", nl) ? 2 : 1;
      this.buf = this.buf.slice(nl + len);
      this.line(line);
    }
  }

  line(line) {
    if (line === "") {
      if (this.data.length) this.onEvent({ event: this.event || "message", data: this.data.join("\n") });
      this.reset();
      return;
    }
    if (line.startsWith(":")) return; // comment / keep-alive
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "event") this.event = value;
    else if (field === "data") this.data.push(value);
  }
}

/**
 * Follows `path` until close() is called. `onEvent({event, data})` gets each
 * event with `data` parsed as JSON; `onState("live" | "reconnecting" |
 * "closed", detail)`. `onError(err)` gets an HTTP error (no retry then).
 */
export function follow(path, { onEvent, onState, onError }) {
  const ctl = new AbortController();
  let closed = false;
  let delay = 1000;

  async function once() {
    const resp = await fetch(path, {
      headers: authHeaders({ Accept: "text/event-stream" }),
      signal: ctl.signal,
      cache: "no-store",
    });
    if (!resp.ok) {
      const err = new Error(`HTTP ${resp.status}`);
      err.status = resp.status;
      try { err.problem = await resp.json(); } catch (_) { /* not JSON */ }
      throw err;
    }
    onState?.("live");
    delay = 1000;
    const reader = resp.body.getReader();
    const decoder = new TextDecoder();
    const parser = new EventParser((ev) => {
      let data = ev.data;
      try { data = JSON.parse(ev.data); } catch (_) { /* plain text */ }
      onEvent({ event: ev.event, data });
    });
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      parser.push(decoder.decode(value, { stream: true }));
    }
  }

  (async () => {
    while (!closed) {
      try {
        await once();
        if (closed) break;
        // The server ended the stream without the page closing it (the job
        // ended, or the server is going away): look again shortly.
      } catch (e) {
        if (closed || e.name === "AbortError") break;
        if (e.status && e.status >= 400 && e.status < 500) {
          closed = true;
          onError?.(e);
          if (e.status === 401) {
            window.dispatchEvent(new CustomEvent("vitrine:unauthorized", { detail: { hadToken: true } }));
          }
          break;
        }
      }
      if (closed) break;
      onState?.("reconnecting", delay);
      await new Promise((r) => setTimeout(r, delay));
      delay = Math.min(delay * 2, 8000);
    }
    onState?.("closed");
  })();

  return {
    close() {
      closed = true;
      ctl.abort();
    },
  };
}
