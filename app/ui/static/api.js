// The API client: every call sends the stored key; a 401 asks the user for one and retries.

const KEY = "stepwise.apiKey";

export class ApiError extends Error {
  constructor(status, problem) {
    super(problem.detail || problem.title || `HTTP ${status}`);
    this.status = status;
    this.problem = problem;
  }
}

let askForKey = async () => {
  throw new ApiError(401, { status: 401, title: "Unauthorized", code: "unauthorized" });
};
let pendingPrompt = null;

// The app registers the prompt: (problem, hadKey) => Promise<string>.
export function onKeyNeeded(prompt) {
  askForKey = prompt;
}

export function storedKey() {
  return localStorage.getItem(KEY) || "";
}

export function storeKey(key) {
  if (key) localStorage.setItem(KEY, key);
  else localStorage.removeItem(KEY);
}

export function authHeaders() {
  const key = storedKey();
  return key ? { Authorization: `Bearer ${key}` } : {};
}

// Ask once for all the calls that got a 401 at the same time.
export async function newKey(problem) {
  if (!pendingPrompt) {
    pendingPrompt = askForKey(problem, Boolean(storedKey())).finally(() => {
      pendingPrompt = null;
    });
  }
  storeKey(await pendingPrompt);
}

export async function problemOf(response) {
  const text = await response.text();
  try {
    const body = JSON.parse(text);
    if (body && typeof body === "object") return body;
  } catch {
    // not JSON: described below
  }
  return { status: response.status, title: response.statusText || "Error", detail: text.slice(0, 500) };
}

export async function request(method, path, { body, headers = {}, signal } = {}) {
  for (;;) {
    const init = { method, signal, headers: { Accept: "application/json", ...headers, ...authHeaders() } };
    if (body !== undefined) {
      init.body = JSON.stringify(body);
      init.headers["Content-Type"] = "application/json";
    }
    const response = await fetch(path, init);
    if (response.status === 401) {
      await newKey(await problemOf(response));
      continue;
    }
    if (!response.ok) throw new ApiError(response.status, await problemOf(response));
    if (response.status === 204) return null;
    return response.json();
  }
}

export const api = {
  get: (path, options) => request("GET", path, options),
  post: (path, body, options) => request("POST", path, { ...options, body }),
};

export function query(params) {
  const search = new URLSearchParams();
  for (const [name, value] of Object.entries(params)) {
    if (value !== undefined && value !== null && value !== "") search.set(name, value);
  }
  const text = search.toString();
  return text ? `?${text}` : "";
}

// Every page of a `{items, next_cursor}` list.
export async function all(path, params = {}, signal) {
  const items = [];
  let cursor;
  do {
    const page = await api.get(path + query({ ...params, limit: 500, cursor }), { signal });
    items.push(...page.items);
    cursor = page.next_cursor;
  } while (cursor);
  return items;
}
