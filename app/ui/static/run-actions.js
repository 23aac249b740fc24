// What a person can do to a run: answer its pending interrupts (a form from the
// interrupt's schema), send a session message, cancel it.

import { api } from "./api.js";
import { clear, errorBox, h, pretty } from "./dom.js";
import { schemaForm } from "./schema-form.js";

const TERMINAL = new Set(["completed", "failed", "cancelled"]);
const USER = "stepwise.user";

export function pendingInterrupts(run) {
  if (Array.isArray(run.interrupts) && run.interrupts.length) return run.interrupts;
  return run.interrupt ? [run.interrupt] : [];
}

function question(interrupt) {
  const payload = interrupt.payload;
  if (payload && typeof payload === "object") {
    const text = payload.question ?? payload.reason ?? payload.message ?? payload.prompt;
    if (typeof text === "string") return text;
  }
  return typeof payload === "string" ? payload : null;
}

function schemaOf(interrupt) {
  if (interrupt.schema) return interrupt.schema;
  const payload = interrupt.payload;
  return payload && typeof payload === "object" && payload.schema && typeof payload.schema === "object" ? payload.schema : null;
}

async function submit(problems, action, onDone) {
  clear(problems);
  try {
    await action();
    onDone();
  } catch (error) {
    clear(problems, errorBox(error));
  }
}

function interruptCard(run, interrupt, onDone) {
  const form = schemaForm(schemaOf(interrupt), undefined);
  const comment = h("input", { type: "text", name: "comment", placeholder: "comment (optional)", "aria-label": "comment" });
  const who = h("input", { type: "text", name: "responded_by", placeholder: "your name (optional)", "aria-label": "responded by", value: localStorage.getItem(USER) || "" });
  const problems = h("div", { class: "problems" });
  const answer = (status) =>
    submit(
      problems,
      async () => {
        const body = { interrupt_id: interrupt.id, status };
        if (status === "approved") body.value = form.read();
        if (comment.value.trim()) body.comment = comment.value.trim();
        if (who.value.trim()) {
          body.responded_by = who.value.trim();
          localStorage.setItem(USER, body.responded_by);
        }
        await api.post(`/runs/${run.id}/response`, body);
      },
      onDone,
    );
  const text = question(interrupt);
  return h(
    "form",
    {
      class: "interrupt-form card",
      "data-interrupt": interrupt.id,
      onsubmit: (event) => {
        event.preventDefault();
        answer("approved");
      },
    },
    h("h3", {}, `${interrupt.kind || "interrupt"} at `, h("code", {}, interrupt.node || "?"), interrupt.branch ? [" ", h("span", { class: "branch" }, interrupt.branch)] : null),
    text ? h("p", { class: "question" }, text) : null,
    h("details", {}, h("summary", {}, "payload"), h("pre", {}, pretty(interrupt.payload))),
    form.element,
    h("div", { class: "field" }, comment),
    h("div", { class: "field" }, who),
    h(
      "div",
      { class: "actions" },
      h("button", { type: "submit", class: "approve" }, "Approve"),
      h("button", { type: "button", class: "reject danger", onclick: () => answer("rejected") }, "Reject"),
    ),
    problems,
  );
}

function messageCard(run, onDone) {
  const text = h("textarea", { name: "message", rows: 3, placeholder: "your message", "aria-label": "session message" });
  const problems = h("div", { class: "problems" });
  const prompt = run.awaiting_input && (run.awaiting_input.prompt ?? null);
  return h(
    "form",
    {
      class: "message-form card",
      onsubmit: (event) => {
        event.preventDefault();
        submit(problems, () => api.post(`/runs/${run.id}/messages`, { message: text.value }), onDone);
      },
    },
    h("h3", {}, "Waiting for a message at ", h("code", {}, run.current_node || "?")),
    prompt ? h("p", { class: "question" }, prompt) : null,
    text,
    h("div", { class: "actions" }, h("button", { type: "submit" }, "Send")),
    problems,
  );
}

// Redraws the pending forms only when what is pending changed (so typing survives refreshes).
export function actionPanel(panel, { onDone }) {
  let shown = null;
  return {
    update(run) {
      const pending = pendingInterrupts(run);
      const key = `${run.status}|${pending.map((i) => i.id).join(",")}`;
      if (key === shown) return;
      shown = key;
      const cards = pending.map((interrupt) => interruptCard(run, interrupt, onDone));
      if (run.status === "awaiting_input") cards.push(messageCard(run, onDone));
      clear(panel, cards.length ? [h("h2", {}, "Waiting for you"), cards] : null);
      panel.hidden = !cards.length;
    },
  };
}

// A cancel button that asks for a second click; made once, so that a refresh of the page
// between the two clicks keeps it armed.
export function cancelControl(runId, onDone, problems) {
  const button = h("button", { type: "button", class: "cancel danger", hidden: true }, "Cancel run");
  button.addEventListener("click", () => {
    if (!button.classList.contains("confirm")) {
      button.classList.add("confirm");
      button.textContent = "Really cancel?";
      return;
    }
    button.disabled = true;
    submit(problems, () => api.post(`/runs/${runId}/cancel`), onDone).finally(() => {
      button.disabled = false;
      button.classList.remove("confirm");
      button.textContent = "Cancel run";
    });
  });
  return {
    element: button,
    update(run) {
      button.hidden = TERMINAL.has(run.status);
    },
  };
}
