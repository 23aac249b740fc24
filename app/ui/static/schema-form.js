// A form generated from a JSON Schema: an object with simple typed properties gives one
// input per property; anything else gives a JSON textarea.

import { h, parseJson, pretty } from "./dom.js";

const SIMPLE = new Set(["string", "number", "integer", "boolean"]);

function typeOf(schema) {
  if (!schema || typeof schema !== "object") return null;
  if (Array.isArray(schema.enum)) return "enum";
  const type = Array.isArray(schema.type) ? schema.type.find((t) => t !== "null") : schema.type;
  return SIMPLE.has(type) ? type : null;
}

export function isSimpleObject(schema) {
  return Boolean(
    schema &&
      schema.type === "object" &&
      schema.properties &&
      Object.keys(schema.properties).length &&
      Object.values(schema.properties).every((p) => typeOf(p) !== null),
  );
}

function field(name, schema, required) {
  const type = typeOf(schema);
  const id = `field-${name}-${Math.random().toString(36).slice(2, 8)}`;
  let input;
  if (type === "boolean") {
    input = h("input", { type: "checkbox", id, name, checked: schema.default === true });
  } else if (type === "enum") {
    input = h(
      "select",
      { id, name },
      required ? null : h("option", { value: "" }, "—"),
      schema.enum.map((option, i) => h("option", { value: String(i), selected: schema.default === option }, String(option))),
    );
  } else if (type === "number" || type === "integer") {
    input = h("input", { type: "number", id, name, step: type === "integer" ? "1" : "any", value: schema.default ?? "" });
  } else {
    input = h("input", { type: "text", id, name, value: schema.default ?? "" });
  }
  const label = h("label", { for: id }, schema.title || name, required ? h("span", { class: "required", title: "required" }, " *") : null);
  const row = h("div", { class: ["field", `field-${type}`] }, label, input, schema.description ? h("small", {}, schema.description) : null);

  const read = () => {
    if (type === "boolean") return input.checked;
    if (type === "enum") return input.value === "" ? undefined : schema.enum[Number(input.value)];
    const text = input.value;
    if (text === "") {
      if (required) throw new Error(`${name} is required`);
      return undefined;
    }
    if (type === "number" || type === "integer") {
      const number = Number(text);
      if (!Number.isFinite(number) || (type === "integer" && !Number.isInteger(number))) {
        throw new Error(`${name} must be ${type === "integer" ? "an integer" : "a number"}`);
      }
      return number;
    }
    return text;
  };
  return { row, read };
}

// → {element, read()}: read() returns the value or throws an Error saying what is wrong.
export function schemaForm(schema, initial) {
  if (isSimpleObject(schema)) {
    const required = new Set(schema.required || []);
    const fields = Object.entries(schema.properties).map(([name, property]) => [name, field(name, property, required.has(name))]);
    return {
      element: h("div", { class: "schema-form" }, fields.map(([, f]) => f.row)),
      read() {
        const value = {};
        for (const [name, f] of fields) {
          const v = f.read();
          if (v !== undefined) value[name] = v;
        }
        return value;
      },
    };
  }
  const textarea = h("textarea", { class: "json", rows: 6, spellcheck: "false", name: "value", "aria-label": "value" });
  textarea.value = initial === undefined ? "" : pretty(initial);
  const read = () => {
    // JSON when it parses; any other text is sent as a string (an answer in words)
    try {
      return parseJson(textarea.value, "the value") ?? null;
    } catch {
      return textarea.value.trim();
    }
  };
  return {
    element: h("div", { class: "schema-form" }, h("label", {}, "Value (JSON, or plain text)"), textarea, schema ? h("details", {}, h("summary", {}, "schema"), h("pre", {}, pretty(schema))) : null),
    read,
  };
}
