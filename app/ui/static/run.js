// The run page: header and actions, the graph coloured by node state, the live event
// stream with per-node transcripts, the state, and the checkpoint tree.

import { api } from "./api.js";
import { checkpointPanel } from "./checkpoints.js";
import { clear, compact, errorBox, h, link, pretty, statusBadge, when } from "./dom.js";
import { renderGraph } from "./graph.js";
import { actionPanel, cancelControl, pendingInterrupts } from "./run-actions.js";
import { followEvents } from "./sse.js";

const TERMINAL = new Set(["completed", "failed", "cancelled"]);
const PAUSED = new Set(["interrupted", "awaiting_input", "suspended"]);
const REFRESH_ON = /^(run\.|checkpoint\.saved|state\.updated|node\.(completed|failed))/;

const MAX_SHOWN_EVENTS = 2000; // all are kept for the graph; the list shows the newest

const topNode = (node) => (node ? String(node).split("/")[0] : null);

// Node id → done | current | failed | paused | cancelled (absent: not reached).
export function nodeStates(events, run) {
  const states = {};
  for (const event of events) {
    const id = topNode(event.node);
    if (!id) continue;
    if (event.type === "node.started" || event.type === "node.retrying") states[id] = "current";
    else if (event.type === "node.completed") states[id] = "done";
    else if (event.type === "node.failed") states[id] = "failed";
  }
  if (!run) return states;
  const active = run.status === "running" || run.status === "queued";
  for (const [id, state] of Object.entries(states)) {
    if (state === "current" && !active) states[id] = run.status === "cancelled" ? "cancelled" : PAUSED.has(run.status) ? "paused" : run.status === "failed" ? "failed" : "done";
  }
  if (PAUSED.has(run.status)) {
    const waiting = pendingInterrupts(run).map((i) => topNode(i.node));
    if (!waiting.length && run.current_node) waiting.push(topNode(run.current_node));
    for (const id of waiting) if (id) states[id] = "paused";
  } else if (active && run.current_node && states[topNode(run.current_node)] !== "current") {
    if (run.status === "running") states[topNode(run.current_node)] = "current";
  } else if (run.status === "failed" && run.error && run.error.node) {
    states[topNode(run.error.node)] = "failed";
  }
  return states;
}

function branchesOf(events) {
  const branches = {};
  for (const event of events) {
    const branch = event.data && typeof event.data === "object" ? event.data.branch : null;
    const id = topNode(event.node);
    if (branch && id) (branches[id] ||= new Set()).add(branch);
  }
  return branches;
}

// The edges the run went along, from its branch.evaluated events (top-level nodes only).
function takenEdges(events) {
  const taken = new Set();
  for (const event of events) {
    if (event.type !== "branch.evaluated" || !event.data || !event.data.result) continue;
    if (event.node && String(event.node).includes("/")) continue; // inside a subgraph
    for (const to of [].concat(event.data.to)) taken.add(`${event.data.from}>${to}`);
  }
  return taken;
}

function legend() {
  const items = [["done", "done"], ["current", "current"], ["paused", "paused"], ["failed", "failed"], ["unreached", "not reached"]];
  return h("div", { class: "legend" }, items.map(([state, text]) => h("span", { class: "legend-item", "data-state": state }, h("i", {}), text)));
}

export function mountRun(root, runId, navigate) {
  const headInfo = h("div", {});
  const problems = h("div", { class: "problems" });
  const cancel = cancelControl(runId, () => refresh(), problems);
  const header = h("header", { class: "run-header" }, headInfo, h("div", { class: "actions" }, cancel.element, h("button", { type: "button", onclick: () => refresh() }, "Refresh")));
  const graphBox = h("div", { class: "graph-box" }, h("p", { class: "muted" }, "loading the definition…"));
  const nodeBox = h("div", { class: "node-detail" }, h("p", { class: "muted" }, "Click a node for its configuration and latest output."));
  const pending = h("section", { class: "panel pending", hidden: true });
  const streamStatus = h("span", { class: "stream-status", "data-stream": "connecting" }, "connecting…");
  const eventList = h("ol", { class: "events" });
  const transcripts = h("div", { class: "transcripts" }, h("p", { class: "muted empty" }, "Tokens and progress text from the steps appear here as they arrive."));
  const stateView = h("pre", { class: "json-view state" });
  const ioView = h("div", { class: "io" });
  const cpPanel = h("section", { class: "panel checkpoints" });
  clear(
    root,
    header,
    problems,
    h(
      "div",
      { class: "run-grid" },
      h("section", { class: "panel graph-panel" }, h("h2", {}, "Graph"), legend(), graphBox, nodeBox),
      pending,
      h("section", { class: "panel events-panel" }, h("h2", {}, "Events ", streamStatus), eventList),
      h("section", { class: "panel transcript-panel" }, h("h2", {}, "Transcript"), transcripts),
      h("section", { class: "panel state-panel" }, h("h2", {}, "State"), stateView, ioView),
      cpPanel,
    ),
  );

  let run = null;
  let graph = null;
  let definition = null;
  const events = [];
  const transcriptText = new Map();
  const transcriptAttempt = new Map();
  let timer = null;
  let closed = false;
  let following = () => {};
  // set by an action that makes a run go on (a resume, an answer): its stream must come
  // back even if the run is terminal again before the page next looks
  let restart = false;

  const recolour = () => graph && graph.update(nodeStates(events, run), branchesOf(events), takenEdges(events));
  const goneOn = () => {
    restart = true;
    return refresh();
  };
  const checkpoints = checkpointPanel(cpPanel, runId, { navigate, onChanged: goneOn });
  const actions = actionPanel(pending, { onDone: goneOn });

  function drawHeader() {
    const wf = run.workflow;
    const wfLink = wf.version ? link(`#/workflows/${encodeURIComponent(wf.name)}/${wf.version}`, `${wf.name} v${wf.version}`) : `${wf.name} (inline)`;
    cancel.update(run);
    clear(
      headInfo,
      h("h1", {}, "Run ", h("code", { class: "run-id" }, run.id)),
      h(
        "p",
        { class: "meta" },
        statusBadge(run.status),
        " ",
        wfLink,
        run.current_node ? [" · at ", h("code", { class: "current-node" }, run.current_node)] : null,
        ` · ${run.step_count} steps · started ${when(run.created_at)} · updated ${when(run.updated_at)}`,
        run.parent_run_id ? [" · forked from ", link(`#/runs/${run.parent_run_id}`, run.parent_run_id.slice(0, 8))] : null,
        run.resume_at ? ` · resumes at ${when(run.resume_at)}` : null,
        run.usage && run.usage.model_calls ? ` · ${run.usage.model_calls} model calls, ${run.usage.input_tokens} + ${run.usage.output_tokens} tokens` : null,
      ),
      run.error ? h("div", { class: "error run-error", "data-code": run.error.code }, h("strong", {}, run.error.code), run.error.node ? [" at ", h("code", {}, run.error.node)] : null, h("div", { class: "detail" }, run.error.message)) : null,
    );
  }

  async function refresh() {
    if (closed) return;
    try {
      run = await api.get(`/runs/${runId}`);
      drawHeader();
      actions.update(run);
      stateView.textContent = pretty(run.state);
      clear(ioView, h("h3", {}, "Inputs"), h("pre", { class: "json-view" }, pretty(run.inputs)), run.status === "completed" ? [h("h3", {}, "Output"), h("pre", { class: "json-view output" }, pretty(run.output))] : null);
      recolour();
      following();
      await checkpoints.refresh();
    } catch (error) {
      clear(problems, errorBox(error));
    }
  }

  const soon = () => {
    clearTimeout(timer);
    timer = setTimeout(refresh, 150);
  };

  function transcript(event) {
    const text = event.data && typeof event.data.text === "string" ? event.data.text : null;
    if (text === null || !(event.type === "message.delta" || event.type === "step.progress")) return;
    const branch = event.data.branch || "";
    const key = `${event.node}|${branch}`;
    let pre = transcriptText.get(key);
    if (!pre) {
      transcripts.querySelector(".empty")?.remove();
      pre = h("pre", { class: "tokens" });
      transcripts.append(h("div", { class: "transcript", "data-node": event.node || "", "data-branch": branch }, h("h3", {}, h("code", {}, event.node || "run"), branch ? [" ", h("span", { class: "branch" }, branch)] : null), pre));
      transcriptText.set(key, pre);
    }
    // a model's answer retried after a failure mid-answer starts again: say so, not run on
    const attempt = event.type === "message.delta" ? event.data.attempt : undefined;
    if (attempt !== undefined) {
      const last = transcriptAttempt.get(key);
      if (last !== undefined && last !== attempt) pre.append(document.createTextNode(`\n— attempt ${attempt} —\n`));
      transcriptAttempt.set(key, attempt);
    }
    pre.append(document.createTextNode(text));
  }

  function onEvent(event) {
    events.push(event);
    const atBottom = eventList.scrollHeight - eventList.scrollTop - eventList.clientHeight < 40;
    const branch = event.data && typeof event.data === "object" ? event.data.branch : null;
    if (eventList.childElementCount >= MAX_SHOWN_EVENTS) eventList.firstElementChild.remove();
    eventList.append(
      h(
        "li",
        { class: "event", "data-seq": event.seq, "data-type": event.type },
        h("span", { class: "seq" }, event.seq),
        h("span", { class: "type" }, event.type),
        event.node ? h("code", { class: "node" }, event.node) : null,
        branch ? h("span", { class: "branch", title: "branch" }, branch) : null,
        h("span", { class: "data", title: JSON.stringify(event.data) }, compact(event.data)),
        h("time", { datetime: event.ts }, new Date(event.ts).toLocaleTimeString()),
      ),
    );
    if (atBottom) eventList.scrollTop = eventList.scrollHeight;
    transcript(event);
    recolour();
    if (REFRESH_ON.test(event.type)) soon();
  }

  async function showNode(id) {
    for (const el of graphBox.querySelectorAll("g.node")) el.classList.toggle("selected", el.dataset.node === id);
    const node = definition.nodes[id] || {};
    const state = nodeStates(events, run)[id] || "unreached";
    clear(nodeBox, h("p", { class: "muted" }, "loading…"));
    try {
      const latest = await checkpoints.latest();
      const kept = latest && latest.nodes ? latest.nodes[id] : undefined;
      clear(
        nodeBox,
        h("h3", {}, h("code", {}, id), " ", h("span", { class: "node-state", "data-state": state }, state)),
        h("p", { class: "muted" }, `step ${node.step}`, node.agent ? ` · agent ${node.agent}` : "", ` · visits ${latest && latest.visits ? latest.visits[id] || 0 : 0}`, ` · ${events.filter((e) => topNode(e.node) === id).length} events`),
        node.with ? [h("h4", {}, "Configuration (with)"), h("pre", { class: "json-view" }, pretty(node.with))] : null,
        h("h4", {}, "Latest output"),
        kept && "output" in kept ? h("pre", { class: "json-view node-output" }, pretty(kept.output)) : h("p", { class: "muted node-output" }, "no output yet"),
      );
    } catch (error) {
      clear(nodeBox, errorBox(error));
    }
  }

  async function loadGraph() {
    const wf = run.workflow;
    if (!wf.version) {
      clear(graphBox, h("p", { class: "muted" }, "This run's definition was sent inline: there is no stored version to draw."));
      return;
    }
    try {
      const stored = await api.get(`/workflows/${encodeURIComponent(wf.name)}/versions/${wf.version}`);
      definition = stored.definition;
      graph = renderGraph(graphBox, definition, { onSelect: showNode });
      recolour();
    } catch (error) {
      clear(graphBox, errorBox(error));
    }
  }

  let stream = null;
  function follow() {
    stream = followEvents(runId, {
      after: events.length ? events[events.length - 1].seq : 0,
      onEvent,
      onStatus(status, error) {
        streamStatus.dataset.stream = status;
        streamStatus.textContent = { live: "live", reconnecting: "reconnecting…", closed: "closed" }[status] || status;
        if (error) clear(problems, errorBox(error));
        if (status === "closed") {
          stream = null;
          following(); // an action during the stream's last moments
        }
      },
      async isFinished() {
        await refresh();
        return Boolean(run && TERMINAL.has(run.status));
      },
    });
  }
  (async () => {
    await refresh();
    if (!run || closed) return;
    await loadGraph();
    if (closed) return;
    follow();
    // a terminal run that is resumed again gets its stream back
    following = () => {
      if (!stream && !closed && run && (restart || !TERMINAL.has(run.status))) {
        restart = false;
        follow();
      }
    };
  })();

  return () => {
    closed = true;
    clearTimeout(timer);
    if (stream) stream.close();
  };
}
