// The inspector's shell: hash routing, the API-key prompt, the views.

import { onKeyNeeded, storedKey, storeKey } from "./api.js";
import { clear, h } from "./dom.js";
import { mountRun } from "./run.js";
import { mountRuns } from "./runs.js";
import { mountWorkflow, mountWorkflows } from "./workflows.js";

const main = document.getElementById("main");
const dialog = document.getElementById("key-dialog");
let cleanup = null;

function navigate(hash) {
  if (location.hash === hash) route();
  else location.hash = hash;
}

function route() {
  if (cleanup) cleanup();
  cleanup = null;
  const [path, search] = (location.hash.slice(1) || "/runs").split("?");
  const parts = path.split("/").filter(Boolean).map(decodeURIComponent);
  const params = new URLSearchParams(search || "");
  for (const a of document.querySelectorAll("nav.top a")) a.classList.toggle("active", a.dataset.section === parts[0]);
  if (parts[0] === "runs" && parts[1]) cleanup = mountRun(main, parts[1], navigate);
  else if (parts[0] === "workflows" && parts[1]) mountWorkflow(main, parts[1], parts[2] ? Number(parts[2]) : null, navigate);
  else if (parts[0] === "workflows") mountWorkflows(main);
  else if (parts[0] === "runs" || !parts.length) cleanup = mountRuns(main, params, navigate);
  else clear(main, h("h1", {}, "Not found"), h("p", {}, "No page at ", h("code", {}, location.hash)));
  if (typeof cleanup !== "function") cleanup = null;
}

// The server answered 401: ask for a key (again, saying so, when the stored one failed).
onKeyNeeded(
  (problem, hadKey) =>
    new Promise((resolve, reject) => {
      const form = dialog.querySelector("form");
      const input = dialog.querySelector("input[name=key]");
      const message = dialog.querySelector(".key-message");
      message.textContent = hadKey ? `The stored key was refused (${problem.detail || problem.code}). Enter another.` : "This server needs an API key.";
      input.value = "";
      const done = (event) => {
        event.preventDefault();
        const key = input.value.trim();
        if (!key) return;
        form.removeEventListener("submit", done);
        dialog.removeEventListener("cancel", cancelled);
        dialog.close();
        resolve(key);
      };
      const cancelled = () => {
        form.removeEventListener("submit", done);
        dialog.removeEventListener("cancel", cancelled);
        reject(Object.assign(new Error("no API key given"), { problem }));
      };
      form.addEventListener("submit", done);
      dialog.addEventListener("cancel", cancelled);
      dialog.showModal();
      input.focus();
    }),
);

document.getElementById("forget-key").addEventListener("click", () => {
  storeKey("");
  route();
});
const showKeyState = () => {
  document.getElementById("forget-key").hidden = !storedKey();
};
window.addEventListener("storage", showKeyState);
window.addEventListener("hashchange", () => {
  route();
  showKeyState();
});
route();
showKeyState();
