// A structural diff of two JSON values: [{op: "add" | "remove" | "change", path, before, after}].

const isObject = (v) => v !== null && typeof v === "object" && !Array.isArray(v);

export function jsonDiff(before, after, path = []) {
  if (isObject(before) && isObject(after)) {
    const changes = [];
    for (const key of Object.keys(before)) {
      if (!(key in after)) changes.push({ op: "remove", path: [...path, key], before: before[key] });
      else changes.push(...jsonDiff(before[key], after[key], [...path, key]));
    }
    for (const key of Object.keys(after)) {
      if (!(key in before)) changes.push({ op: "add", path: [...path, key], after: after[key] });
    }
    return changes;
  }
  if (Array.isArray(before) && Array.isArray(after)) {
    const changes = [];
    const shared = Math.min(before.length, after.length);
    for (let i = 0; i < shared; i++) changes.push(...jsonDiff(before[i], after[i], [...path, i]));
    for (let i = shared; i < after.length; i++) changes.push({ op: "add", path: [...path, i], after: after[i] });
    for (let i = shared; i < before.length; i++) changes.push({ op: "remove", path: [...path, i], before: before[i] });
    return changes;
  }
  return JSON.stringify(before) === JSON.stringify(after) ? [] : [{ op: "change", path, before, after }];
}

export function pathText(path) {
  return path.reduce((text, part) => (typeof part === "number" ? `${text}[${part}]` : `${text}.${part}`), "state");
}
