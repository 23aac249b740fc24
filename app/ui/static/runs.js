// The runs list: filters (status, workflow) kept in the URL, cursor pagination, and
// live status by polling what is shown.

import { api, query } from "./api.js";
import { clear, errorBox, h, link, statusBadge, when } from "./dom.js";

export const STATUSES = ["queued", "running", "interrupted", "awaiting_input", "suspended", "completed", "failed", "cancelled"];
const POLL_MS = 2000;
const clamp = (n, low, high) => Math.min(high, Math.max(low, n));

export function mountRuns(root, params, navigate) {
  const status = h("select", { name: "status", "aria-label": "status" }, h("option", { value: "" }, "any status"), STATUSES.map((s) => h("option", { value: s, selected: params.get("status") === s }, s)));
  const workflow = h("input", { type: "text", name: "workflow", list: "workflow-names", placeholder: "any workflow", value: params.get("workflow") || "", "aria-label": "workflow" });
  const names = h("datalist", { id: "workflow-names" });
  const problems = h("div", { class: "problems" });
  const body = h("tbody", {});
  const more = h("button", { type: "button", class: "more", hidden: true }, "Load more");
  const filters = h(
    "form",
    {
      class: "filters",
      onsubmit: (event) => {
        event.preventDefault();
        navigate(`#/runs${query({ status: status.value, workflow: workflow.value.trim(), limit: params.get("limit") })}`);
      },
    },
    status,
    workflow,
    names,
    h("button", { type: "submit" }, "Filter"),
    params.toString() ? link("#/runs", "clear") : null,
  );
  clear(
    root,
    h("h1", {}, "Runs"),
    filters,
    problems,
    h("table", { class: "runs" }, h("thead", {}, h("tr", {}, ["Run", "Workflow", "Status", "At node", "Steps", "Created", "Updated"].map((t) => h("th", {}, t)))), body),
    more,
  );

  const filter = { status: params.get("status") || undefined, workflow: params.get("workflow") || undefined };
  const pageSize = clamp(Math.trunc(Number(params.get("limit"))) || 50, 1, 500);
  let items = [];
  let nextCursor = null;
  let timer = null;
  let closed = false;

  function draw() {
    clear(
      body,
      items.length
        ? items.map((run) =>
            h(
              "tr",
              { "data-run": run.id, "data-status": run.status },
              h("td", {}, link(`#/runs/${run.id}`, h("code", {}, run.id.slice(0, 8)))),
              h("td", {}, run.workflow.version ? link(`#/workflows/${encodeURIComponent(run.workflow.name)}/${run.workflow.version}`, `${run.workflow.name} v${run.workflow.version}`) : `${run.workflow.name} (inline)`),
              h("td", {}, statusBadge(run.status)),
              h("td", {}, run.current_node ? h("code", {}, run.current_node) : ""),
              h("td", {}, run.step_count),
              h("td", {}, when(run.created_at)),
              h("td", {}, when(run.updated_at)),
            ),
          )
        : h("tr", {}, h("td", { colspan: 7, class: "muted empty" }, "No runs match.")),
    );
    more.hidden = !nextCursor;
  }

  async function load(cursor) {
    // a poll reloads everything shown so far in one page
    const limit = cursor ? pageSize : clamp(items.length, pageSize, 500);
    const page = await api.get(`/runs${query({ ...filter, cursor, limit })}`);
    items = cursor ? [...items, ...page.items] : page.items;
    nextCursor = page.next_cursor;
    draw();
    clear(problems);
  }

  async function poll() {
    try {
      if (!document.hidden) await load();
    } catch (error) {
      clear(problems, errorBox(error));
    }
    if (!closed) timer = setTimeout(poll, POLL_MS);
  }

  more.addEventListener("click", () => load(nextCursor).catch((error) => clear(problems, errorBox(error))));
  poll();
  api
    .get("/workflows?limit=500")
    .then((page) => clear(names, page.items.map((w) => h("option", { value: w.name }))))
    .catch(() => {});
  return () => {
    closed = true;
    clearTimeout(timer);
  };
}
