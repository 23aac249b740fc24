// Small DOM helpers: element builders, formatting, and the problem+json error box.

const SVG_NS = "http://www.w3.org/2000/svg";

function build(el, attrs, children) {
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name.startsWith("on") && typeof value === "function") {
      el.addEventListener(name.slice(2), value);
    } else if (name === "class") {
      el.setAttribute("class", Array.isArray(value) ? value.filter(Boolean).join(" ") : value);
    } else if (name === "value" && "value" in el) {
      el.value = value;
    } else if (name === "checked" || name === "disabled" || name === "selected") {
      el[name] = Boolean(value);
    } else {
      el.setAttribute(name, value === true ? "" : String(value));
    }
  }
  append(el, children);
  return el;
}

export function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

export function h(tag, attrs, ...children) {
  return build(document.createElement(tag), attrs, children);
}

export function s(tag, attrs, ...children) {
  return build(document.createElementNS(SVG_NS, tag), attrs, children);
}

export function clear(el, ...children) {
  el.replaceChildren();
  return append(el, children);
}

export function pretty(value) {
  return value === undefined ? "" : JSON.stringify(value, null, 2);
}

export function compact(value, max = 160) {
  const text = value === undefined ? "" : JSON.stringify(value);
  return text.length > max ? text.slice(0, max - 1) + "…" : text;
}

export function when(iso) {
  if (!iso) return "";
  const date = new Date(iso);
  return Number.isNaN(date.getTime()) ? String(iso) : date.toLocaleString();
}

export function statusBadge(status) {
  return h("span", { class: `badge status-${status}`, "data-status": status }, status);
}

export function link(href, ...children) {
  return h("a", { href }, ...children);
}

// An API error (problem+json) or any other error as a readable box.
export function errorBox(error) {
  const problem = error && error.problem;
  if (!problem) {
    return h("div", { class: "error", role: "alert" }, String(error && error.message ? error.message : error));
  }
  const items = Array.isArray(problem.errors) ? problem.errors : [];
  return h(
    "div",
    { class: "error", role: "alert", "data-code": problem.code || "" },
    h("strong", {}, `${problem.status || error.status} ${problem.title || "Error"}`),
    problem.code ? h("code", {}, problem.code) : null,
    h("div", { class: "detail" }, problem.detail || error.message),
    items.length
      ? h(
          "ul",
          {},
          items.map((item) =>
            h("li", {}, h("code", {}, (item.loc || []).join(".")), " ", item.msg || ""),
          ),
        )
      : null,
  );
}

// Parse a JSON text from a textarea, with an error that names the field.
export function parseJson(text, what) {
  const source = text.trim();
  if (!source) return undefined;
  try {
    return JSON.parse(source);
  } catch (error) {
    throw new Error(`${what} is not valid JSON: ${error.message}`);
  }
}
