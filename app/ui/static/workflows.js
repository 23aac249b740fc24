// Workflows: the list, one workflow's versions, a version's graph and definition, and a
// form that starts a run of it.

import { all, api, query } from "./api.js";
import { clear, errorBox, h, link, parseJson, pretty, when } from "./dom.js";
import { renderGraph } from "./graph.js";

export function mountWorkflows(root) {
  const problems = h("div", { class: "problems" });
  const body = h("tbody", {});
  const more = h("button", { type: "button", class: "more", hidden: true }, "Load more");
  clear(root, h("h1", {}, "Workflows"), problems, h("table", { class: "workflows" }, h("thead", {}, h("tr", {}, ["Name", "Latest", "Versions", "Description", "Updated"].map((t) => h("th", {}, t)))), body), more);
  let cursor = null;

  async function load() {
    try {
      const page = await api.get(`/workflows${query({ cursor, limit: 100 })}`);
      if (!cursor && !page.items.length) body.append(h("tr", {}, h("td", { colspan: 5, class: "muted" }, "No workflows stored yet: POST one to /workflows.")));
      for (const wf of page.items) {
        const name = encodeURIComponent(wf.name);
        body.append(
          h(
            "tr",
            { "data-workflow": wf.name },
            h("td", {}, link(`#/workflows/${name}`, wf.name)),
            h("td", {}, link(`#/workflows/${name}/${wf.latest_version}`, `v${wf.latest_version}`)),
            h("td", {}, wf.versions),
            h("td", {}, wf.description || ""),
            h("td", {}, when(wf.updated_at)),
          ),
        );
      }
      cursor = page.next_cursor;
      more.hidden = !cursor;
    } catch (error) {
      clear(problems, errorBox(error));
    }
  }
  more.addEventListener("click", load);
  load();
}

// A first value for the inputs: the required properties of the input schema, typed.
export function inputSkeleton(schema) {
  const blank = { string: "", number: 0, integer: 0, boolean: false, array: [], object: {} };
  const skeleton = {};
  if (schema && schema.type === "object" && schema.properties) {
    for (const name of schema.required || []) {
      const property = schema.properties[name] || {};
      const type = Array.isArray(property.type) ? property.type[0] : property.type;
      skeleton[name] = "default" in property ? property.default : Array.isArray(property.enum) ? property.enum[0] : blank[type] ?? null;
    }
  }
  return skeleton;
}

function startForm(workflow, navigate) {
  const inputs = h("textarea", { class: "json", name: "inputs", rows: 5, spellcheck: "false", "aria-label": "inputs (JSON)" });
  inputs.value = JSON.stringify(inputSkeleton(workflow.definition.inputs), null, 2);
  const problems = h("div", { class: "problems" });
  return h(
    "form",
    {
      class: "start-form card",
      onsubmit: async (event) => {
        event.preventDefault();
        clear(problems);
        try {
          const body = { workflow: workflow.name, version: workflow.version, inputs: parseJson(inputs.value, "the inputs") ?? {} };
          const run = await api.post("/runs", body);
          navigate(`#/runs/${run.id}`);
        } catch (error) {
          clear(problems, errorBox(error));
        }
      },
    },
    h("h2", {}, `Start a run of v${workflow.version}`),
    workflow.definition.inputs ? h("details", {}, h("summary", {}, "input schema"), h("pre", {}, pretty(workflow.definition.inputs))) : null,
    h("label", {}, "Inputs (JSON)"),
    inputs,
    h("div", { class: "actions" }, h("button", { type: "submit" }, "Start run")),
    problems,
  );
}

export function mountWorkflow(root, name, version, navigate) {
  const problems = h("div", { class: "problems" });
  const versionsBox = h("nav", { class: "versions" });
  const main = h("div", { class: "workflow-version" });
  clear(root, h("h1", {}, "Workflow ", h("code", {}, name)), problems, versionsBox, main);
  const path = `/workflows/${encodeURIComponent(name)}`;
  (async () => {
    try {
      const versions = await all(`${path}/versions`);
      const latest = Math.max(...versions.map((v) => v.version));
      const chosen = version || latest;
      clear(
        versionsBox,
        "Versions: ",
        versions.map((v) => [link(`#${path}/${v.version}`, h("span", { class: ["version", v.version === chosen && "selected"] }, `v${v.version}`)), " "]),
      );
      const workflow = versions.find((v) => v.version === chosen) || (await api.get(`${path}/versions/${chosen}`));
      const graphBox = h("div", { class: "graph-box" });
      clear(
        main,
        h("p", { class: "meta" }, workflow.description || "", ` · stored ${when(workflow.created_at)} · `, h("code", { title: "content hash" }, workflow.hash.slice(0, 12)), " · ", link(`#/runs?workflow=${encodeURIComponent(name)}`, "its runs")),
        h("div", { class: "run-grid" }, h("section", { class: "panel graph-panel" }, h("h2", {}, "Graph"), graphBox), h("section", { class: "panel" }, startForm(workflow, navigate), h("details", {}, h("summary", {}, "definition"), h("pre", { class: "json-view definition" }, pretty(workflow.definition))))),
      );
      renderGraph(graphBox, workflow.definition);
    } catch (error) {
      clear(problems, errorBox(error));
    }
  })();
}
