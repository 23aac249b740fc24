// The workflow graph: a layered layout computed from a definition, drawn as SVG.
// Edges with a list `to` fan out (parallel branches); `join` nodes are marked;
// edges that close a cycle go back up along the right-hand side.

import { s } from "./dom.js";

const NODE_H = 46;
const LAYER_GAP = 70;
const NODE_GAP = 36;
const MARGIN = 24;

export function edgesOf(definition) {
  const edges = [];
  (definition.edges || []).forEach((edge, index) => {
    const targets = Array.isArray(edge.to) ? edge.to : [edge.to];
    for (const to of targets) {
      edges.push({ from: edge.from, to, when: edge.when ?? null, loop: Boolean(edge.loop), fan: targets.length > 1, index });
    }
  });
  return edges;
}

function entryOf(definition, ids) {
  return definition.entry && ids.includes(definition.entry) ? definition.entry : ids[0];
}

// Depth-first from the entry (then from every node not yet seen): an edge to a node
// still on the stack closes a cycle.
function backEdges(ids, entry, edges) {
  const out = new Map(ids.map((id) => [id, []]));
  for (const edge of edges) if (out.has(edge.from) && out.has(edge.to)) out.get(edge.from).push(edge);
  const mark = new Map();
  const back = new Set();
  const visit = (id) => {
    mark.set(id, "open");
    for (const edge of out.get(id)) {
      const seen = mark.get(edge.to);
      if (seen === "open") back.add(edge);
      else if (!seen) visit(edge.to);
    }
    mark.set(id, "done");
  };
  for (const id of [entry, ...ids]) if (!mark.has(id)) visit(id);
  return back;
}

export function layoutGraph(definition) {
  const nodes = definition.nodes || {};
  const ids = Object.keys(nodes);
  const entry = entryOf(definition, ids);
  const edges = edgesOf(definition).filter((e) => e.from in nodes && e.to in nodes);
  const back = backEdges(ids, entry, edges);
  for (const edge of edges) edge.back = back.has(edge) || edge.from === edge.to;
  const forward = edges.filter((e) => !e.back);

  // longest path from the roots, in topological order
  const layer = new Map(ids.map((id) => [id, 0]));
  const indegree = new Map(ids.map((id) => [id, 0]));
  for (const edge of forward) indegree.set(edge.to, indegree.get(edge.to) + 1);
  const ready = ids.filter((id) => indegree.get(id) === 0);
  while (ready.length) {
    const id = ready.shift();
    for (const edge of forward.filter((e) => e.from === id)) {
      layer.set(edge.to, Math.max(layer.get(edge.to), layer.get(id) + 1));
      indegree.set(edge.to, indegree.get(edge.to) - 1);
      if (indegree.get(edge.to) === 0) ready.push(edge.to);
    }
  }
  const depth = Math.max(0, ...layer.values());
  const layers = Array.from({ length: depth + 1 }, () => []);
  for (const id of ids) layers[layer.get(id)].push(id);

  // order within layers by the mean position of neighbours, sweeping down and up
  const position = new Map();
  const place = () => layers.forEach((row) => row.forEach((id, i) => position.set(id, i)));
  place();
  const mean = (list) => (list.length ? list.reduce((a, b) => a + b, 0) / list.length : null);
  for (let sweep = 0; sweep < 4; sweep++) {
    const down = sweep % 2 === 0;
    for (const row of down ? layers.slice(1) : layers.slice(0, -1).reverse()) {
      const key = new Map(
        row.map((id) => {
          const near = down
            ? forward.filter((e) => e.to === id).map((e) => position.get(e.from))
            : forward.filter((e) => e.from === id).map((e) => position.get(e.to));
          return [id, mean(near) ?? position.get(id)];
        }),
      );
      row.sort((a, b) => key.get(a) - key.get(b));
      row.forEach((id, i) => position.set(id, i));
    }
  }

  const widthOf = (id) => Math.max(110, 16 + 7.4 * Math.max(id.length, labelOf(nodes[id]).length));
  const rowWidth = (row) => row.reduce((sum, id) => sum + widthOf(id), 0) + NODE_GAP * (row.length - 1);
  const widest = Math.max(...layers.map(rowWidth), 110);
  const placed = [];
  layers.forEach((row, depthIndex) => {
    let x = MARGIN + (widest - rowWidth(row)) / 2;
    for (const id of row) {
      const w = widthOf(id);
      const node = nodes[id] || {};
      placed.push({
        id,
        x,
        y: MARGIN + depthIndex * (NODE_H + LAYER_GAP),
        w,
        h: NODE_H,
        layer: depthIndex,
        step: node.step,
        agent: node.agent ?? null,
        join: node.join ?? null,
        entry: id === entry,
      });
      x += w + NODE_GAP;
    }
  });
  // an edge that skips layers and would cross a node in between goes round on the right
  const byId = new Map(placed.map((n) => [n.id, n]));
  let detours = 0;
  let right = MARGIN + widest;
  for (const edge of forward) {
    const a = byId.get(edge.from);
    const b = byId.get(edge.to);
    if (b.layer - a.layer < 2) continue;
    const low = Math.min(a.x + a.w / 2, b.x + b.w / 2) - 8;
    const high = Math.max(a.x + a.w / 2, b.x + b.w / 2) + 8;
    const between = placed.filter((n) => n.layer > a.layer && n.layer < b.layer);
    if (!between.some((n) => n.x < high && n.x + n.w > low)) continue;
    edge.detour = Math.max(...between.map((n) => n.x + n.w), a.x + a.w, b.x + b.w) + 26 + 14 * detours++;
    right = Math.max(right, edge.detour);
  }
  const hasBack = edges.some((e) => e.back);
  return {
    nodes: placed,
    edges,
    width: right + MARGIN + (hasBack ? 90 : 0),
    height: MARGIN * 2 + layers.length * NODE_H + (layers.length - 1) * LAYER_GAP,
  };
}

function labelOf(node) {
  if (!node) return "";
  const parts = [node.step];
  if (node.agent) parts.push(`@${node.agent}`);
  if (node.join) parts.push(`join: ${node.join}`);
  return parts.join(" · ");
}

function edgePath(a, b, edge, rightEdge) {
  if (edge.back) {
    const sx = a.x + a.w;
    const sy = a.y + a.h / 2;
    const tx = b.x + b.w;
    const ty = b.y + b.h / 2;
    const bulge = Math.max(sx, tx, rightEdge) + 50;
    return `M${sx},${sy} C${bulge},${sy} ${bulge},${ty} ${tx},${ty}`;
  }
  const sx = a.x + a.w / 2;
  const sy = a.y + a.h;
  const tx = b.x + b.w / 2;
  const ty = b.y;
  if (edge.detour) {
    const x = edge.detour;
    return `M${sx},${sy} C${sx},${sy + 30} ${x},${sy + 10} ${x},${sy + 45} L${x},${ty - 45} C${x},${ty - 10} ${tx},${ty - 30} ${tx},${ty}`;
  }
  const dy = (ty - sy) / 2;
  return `M${sx},${sy} C${sx},${sy + dy} ${tx},${ty - dy} ${tx},${ty}`;
}

const shorten = (text, max = 28) => (text.length > max ? text.slice(0, max - 1) + "…" : text);

// Draws into `container`; returns {update(states, branches)} to recolour the nodes.
export function renderGraph(container, definition, { onSelect } = {}) {
  const layout = layoutGraph(definition);
  const byId = new Map(layout.nodes.map((n) => [n.id, n]));
  const rightEdge = Math.max(0, ...layout.nodes.map((n) => n.x + n.w), ...layout.edges.map((e) => e.detour || 0));
  const svg = s("svg", {
    class: "graph",
    viewBox: `0 0 ${layout.width} ${layout.height}`,
    width: layout.width,
    height: layout.height,
    role: "img",
    "aria-label": `graph of ${definition.name || "the workflow"}`,
  });
  svg.append(
    s("defs", {}, s("marker", { id: "arrow", viewBox: "0 0 10 10", refX: 10, refY: 5, markerWidth: 7, markerHeight: 7, orient: "auto-start-reverse" }, s("path", { d: "M0,0 L10,5 L0,10 z", class: "arrowhead" }))),
  );
  const edgeLayer = s("g", { class: "edges" });
  const fanned = new Set();
  for (const edge of layout.edges) {
    const a = byId.get(edge.from);
    const b = byId.get(edge.to);
    const d = edgePath(a, b, edge, rightEdge);
    const cls = ["edge", edge.back && "back", edge.fan && "fan", edge.when !== null && "conditional"];
    const group = s("g", { class: cls, "data-from": edge.from, "data-to": edge.to });
    group.append(s("path", { d, "marker-end": "url(#arrow)" }, s("title", {}, `${edge.from} → ${edge.to}${edge.when ? ` when ${edge.when}` : ""}${edge.fan ? " (parallel)" : ""}`)));
    if (edge.when) {
      const mx = edge.back ? Math.max(a.x + a.w, b.x + b.w, rightEdge) + 40 : edge.detour || (a.x + a.w / 2 + b.x + b.w / 2) / 2;
      const my = edge.back ? (a.y + b.y + a.h) / 2 : (a.y + a.h + b.y) / 2;
      group.append(s("text", { x: mx, y: my, class: "edge-label", "text-anchor": "middle" }, shorten(edge.when)));
    }
    edgeLayer.append(group);
    if (edge.fan && !fanned.has(`${edge.from}#${edge.index}`)) {
      fanned.add(`${edge.from}#${edge.index}`);
      edgeLayer.append(s("circle", { class: "fan-dot", cx: a.x + a.w / 2, cy: a.y + a.h + 5, r: 4 }, s("title", {}, "parallel fan-out")));
    }
  }
  svg.append(edgeLayer);

  const nodeLayer = s("g", { class: "nodes" });
  const elements = new Map();
  for (const node of layout.nodes) {
    const group = s("g", {
      class: ["node", node.join && "join", node.entry && "entry"],
      "data-node": node.id,
      "data-state": "unreached",
      transform: `translate(${node.x},${node.y})`,
      tabindex: onSelect ? 0 : null,
    });
    const title = s("title", {}, node.id);
    const branchText = s("text", { x: node.w / 2, y: node.h + 13, class: "branches", "text-anchor": "middle" });
    group.append(
      title,
      s("rect", { width: node.w, height: node.h, rx: node.join ? 2 : 8 }),
      node.join ? s("rect", { class: "join-bar", width: node.w, height: 5 }) : null,
      s("text", { x: node.w / 2, y: 19, class: "node-id", "text-anchor": "middle" }, node.id),
      s("text", { x: node.w / 2, y: 35, class: "node-step", "text-anchor": "middle" }, labelOf(definition.nodes[node.id])),
      branchText,
    );
    if (onSelect) {
      group.addEventListener("click", () => onSelect(node.id));
      group.addEventListener("keydown", (e) => e.key === "Enter" && onSelect(node.id));
    }
    elements.set(node.id, { group, title, branchText });
    nodeLayer.append(group);
  }
  svg.append(nodeLayer);
  container.replaceChildren(svg);

  return {
    layout,
    // taken: a Set of "from>to" edges the run went along
    update(states = {}, branches = {}, taken = new Set()) {
      for (const [id, { group, title, branchText }] of elements) {
        const state = states[id] || "unreached";
        group.setAttribute("data-state", state);
        const ids = [...(branches[id] || [])];
        branchText.textContent = ids.length ? `⑂ ${shorten(ids.join(", "), 40)}` : "";
        title.textContent = `${id}: ${state}${ids.length ? ` (branches: ${ids.join(", ")})` : ""}`;
      }
      for (const group of svg.querySelectorAll(".edge")) {
        group.classList.toggle("taken", taken.has(`${group.dataset.from}>${group.dataset.to}`));
      }
    },
  };
}
