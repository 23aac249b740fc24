// A run's event stream over fetch() (EventSource cannot send the Authorization header):
// parses SSE frames itself and reconnects with Last-Event-ID until the run is terminal.

import { ApiError, authHeaders, newKey, problemOf } from "./api.js";

// Feeds text chunks; calls onFrame({id, event, data}) for each complete frame.
export class SseParser {
  constructor(onFrame) {
    this.onFrame = onFrame;
    this.buffer = "";
    this.reset();
  }

  reset() {
    this.event = "";
    this.data = [];
    this.id = null;
  }

  push(chunk) {
    this.buffer += chunk;
    // a "\r" at the end may be the first half of "\r\n": keep it for the next chunk
    const end = this.buffer.endsWith("\r") ? this.buffer.length - 1 : this.buffer.length;
    const text = this.buffer.slice(0, end);
    const lines = text.split(/\r\n|\r|\n/);
    const partial = lines.pop();
    this.buffer = partial + this.buffer.slice(end);
    for (const line of lines) this.line(line);
  }

  line(line) {
    if (line === "") {
      if (this.data.length) this.onFrame({ id: this.id, event: this.event || "message", data: this.data.join("\n") });
      this.reset();
      return;
    }
    if (line.startsWith(":")) return; // keep-alive comment
    const colon = line.indexOf(":");
    const field = colon === -1 ? line : line.slice(0, colon);
    let value = colon === -1 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "data") this.data.push(value);
    else if (field === "event") this.event = value;
    else if (field === "id") this.id = value;
  }
}

const sleep = (ms, signal) =>
  new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    signal.addEventListener("abort", () => {
      clearTimeout(timer);
      resolve();
    });
  });

// onEvent(event) for each event; onStatus("live" | "reconnecting" | "closed", error?);
// isFinished() → Promise<bool>: whether to stop instead of reconnecting.
export function followEvents(runId, { after = 0, onEvent, onStatus, isFinished }) {
  const controller = new AbortController();
  let lastId = after;
  let delay = 500;

  async function once() {
    const headers = { Accept: "text/event-stream", ...authHeaders() };
    if (lastId) headers["Last-Event-ID"] = String(lastId);
    const response = await fetch(`/runs/${encodeURIComponent(runId)}/events`, {
      headers,
      signal: controller.signal,
      cache: "no-store",
    });
    if (response.status === 401) {
      await newKey(await problemOf(response));
      return;
    }
    if (!response.ok) throw new ApiError(response.status, await problemOf(response));
    onStatus("live");
    delay = 500;
    const parser = new SseParser((frame) => {
      const event = JSON.parse(frame.data);
      if (event.seq <= lastId) return; // already seen
      lastId = event.seq;
      onEvent(event);
    });
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      parser.push(value);
    }
  }

  (async () => {
    while (!controller.signal.aborted) {
      let failure = null;
      try {
        await once();
      } catch (error) {
        if (controller.signal.aborted) break;
        failure = error;
      }
      if (controller.signal.aborted) break;
      if (!failure && (await isFinished())) break;
      if (failure instanceof ApiError && failure.status < 500 && failure.status !== 429) {
        onStatus("closed", failure);
        return;
      }
      onStatus("reconnecting", failure);
      await sleep(delay, controller.signal);
      delay = Math.min(delay * 2, 10000);
    }
    onStatus("closed");
  })();

  return { close: () => controller.abort() };
}
