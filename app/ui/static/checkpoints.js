// The checkpoint tree of a run (by parent_id), a selected checkpoint's state diffed
// against its parent's, and resume / fork from it.

import { all, api } from "./api.js";
import { compact, clear, errorBox, h, parseJson, statusBadge, when } from "./dom.js";
import { jsonDiff, pathText } from "./json-diff.js";

function label(checkpoint) {
  const step = checkpoint.last_node ? `${checkpoint.last_node} → ${checkpoint.next_node ?? "end"}` : `start → ${checkpoint.next_node ?? "end"}`;
  return `#${checkpoint.seq} ${step}`;
}

export function diffView(before, after) {
  const changes = jsonDiff(before ?? {}, after ?? {});
  if (!changes.length) return h("p", { class: "muted diff-empty" }, "no change to the state");
  return h(
    "ul",
    { class: "diff" },
    changes.map((c) =>
      h(
        "li",
        { class: `diff-${c.op}`, "data-path": pathText(c.path) },
        h("span", { class: "op" }, { add: "+", remove: "−", change: "~" }[c.op]),
        " ",
        h("code", {}, pathText(c.path)),
        ": ",
        c.op === "add" ? compact(c.after) : c.op === "remove" ? compact(c.before) : [compact(c.before), " → ", compact(c.after)],
      ),
    ),
  );
}

// panel: the element to draw into; returns {refresh()}.
export function checkpointPanel(panel, runId, { navigate, onChanged }) {
  const tree = h("div", { class: "cp-tree" });
  const detail = h("div", { class: "cp-detail" }, h("p", { class: "muted" }, "Select a checkpoint to see its state and what changed."));
  clear(panel, h("h2", {}, "Checkpoints"), tree, detail);
  let checkpoints = [];
  let selected = null;
  const details = new Map();

  async function load(id) {
    if (!details.has(id)) details.set(id, await api.get(`/runs/${runId}/checkpoints/${id}`));
    return details.get(id);
  }

  function drawTree() {
    const children = new Map();
    const ids = new Set(checkpoints.map((c) => c.id));
    for (const c of checkpoints) {
      const parent = c.parent_id && ids.has(c.parent_id) ? c.parent_id : null;
      if (!children.has(parent)) children.set(parent, []);
      children.get(parent).push(c);
    }
    const button = (c) =>
      h(
        "button",
        { class: ["cp", c.id === selected && "selected"], type: "button", "data-checkpoint": c.id, "data-seq": c.seq, title: `${c.id} · ${when(c.created_at)}`, onclick: () => select(c.id) },
        label(c),
        " ",
        statusBadge(c.status),
      );
    // a chain of single children stays in one column; a checkpoint with several children
    // (a resume from it, abandoning what followed) indents one column per branch
    const chain = (first) => {
      const items = [];
      for (let c = first; c; ) {
        const kids = children.get(c.id) || [];
        items.push(h("li", {}, button(c), kids.length > 1 ? h("ul", { class: "branches" }, kids.map((k) => h("li", {}, h("ul", {}, chain(k))))) : null));
        c = kids.length === 1 ? kids[0] : null;
      }
      return items;
    };
    const branch = (parent) => h("ul", {}, (children.get(parent) || []).map((root) => chain(root)));
    clear(tree, checkpoints.length ? branch(null) : h("p", { class: "muted" }, "no checkpoint yet"));
  }

  async function select(id) {
    selected = id;
    drawTree();
    const checkpoint = checkpoints.find((c) => c.id === id);
    clear(detail, h("p", { class: "muted" }, "loading…"));
    try {
      const current = await load(id);
      const parent = checkpoint.parent_id ? await load(checkpoint.parent_id) : null;
      drawDetail(checkpoint, current, parent);
    } catch (error) {
      clear(detail, errorBox(error));
    }
  }

  function drawDetail(checkpoint, current, parent) {
    const problems = h("div", { class: "problems" });
    const patch = h("textarea", { class: "json", rows: 4, name: "state_patch", spellcheck: "false", placeholder: '{"key": "new value"}', "aria-label": "state merge patch (JSON)" });
    const act = async (action) => {
      clear(problems);
      try {
        await action();
      } catch (error) {
        clear(problems, errorBox(error));
      }
    };
    const resume = () =>
      act(async () => {
        await api.post(`/runs/${runId}/resume`, { checkpoint_id: checkpoint.id });
        onChanged();
      });
    const fork = (event) => {
      event.preventDefault();
      return act(async () => {
        const statePatch = parseJson(patch.value, "the state patch");
        const body = { checkpoint_id: checkpoint.id };
        if (statePatch !== undefined) body.state_patch = statePatch;
        const forked = await api.post(`/runs/${runId}/fork`, body);
        navigate(`#/runs/${forked.id}`);
      });
    };
    clear(
      detail,
      h("h3", {}, label(checkpoint), " ", statusBadge(checkpoint.status)),
      h("p", { class: "muted" }, `${checkpoint.id} · ${checkpoint.steps_completed} steps · ${when(checkpoint.created_at)}`),
      h("h4", {}, parent ? `State change since #${checkpoints.find((c) => c.id === checkpoint.parent_id)?.seq ?? "parent"}` : "State (first checkpoint)"),
      diffView(parent ? parent.state : {}, current.state),
      h("details", {}, h("summary", {}, "full state"), h("pre", { class: "json-view" }, JSON.stringify(current.state, null, 2))),
      h("div", { class: "actions" }, h("button", { type: "button", class: "resume-from", onclick: resume }, "Resume from here")),
      h(
        "form",
        { class: "fork-form", onsubmit: fork },
        h("label", {}, "Fork from here with a state merge patch (RFC 7386, optional)"),
        patch,
        h("button", { type: "submit" }, "Fork"),
      ),
      problems,
    );
  }

  return {
    async refresh() {
      checkpoints = await all(`/runs/${runId}/checkpoints`);
      drawTree();
    },
    // the newest checkpoint with its full state (node outputs, visits), or null
    async latest() {
      const newest = checkpoints.reduce((a, b) => (!a || b.seq > a.seq ? b : a), null);
      return newest ? load(newest.id) : null;
    },
  };
}
