// DOM helpers. Text always goes in as text nodes (never as HTML), so nothing the API or the
// user supplies can become markup.
import { call } from "./api.js";

/** el("button", {type: "button", onclick: f}, "text", child…) */
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else if (k === "class") node.className = v;
    else if (k === "dataset") Object.assign(node.dataset, v);
    else if (k === "value") node.value = v;
    else if (v === true) node.setAttribute(k, "");
    else node.setAttribute(k, String(v));
  }
  append(node, children);
  return node;
}

function append(node, children) {
  for (const c of children.flat()) {
    if (c === undefined || c === null || c === false) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
}

export function clear(node, ...children) {
  node.replaceChildren();
  append(node, children);
  return node;
}

/** A table; columns: [{title, cell(row) → text or Node, class?}]. */
export function table(columns, rows, empty, attrs = {}) {
  if (!rows.length) return el("p", { class: "muted" }, empty);
  return el("div", { class: "table-wrap" },
    el("table", attrs,
      el("thead", {}, el("tr", {}, columns.map((c) => el("th", { scope: "col" }, c.title)))),
      el("tbody", {}, rows.map((r) => el("tr", {},
        columns.map((c) => el("td", { class: c.class }, c.cell(r) ?? "")))))));
}

let fieldSeq = 0;

/** A labelled input; opts: {type, value, placeholder, hint, required, options (select), rows}. */
export function field(name, label, opts = {}) {
  const id = `f-${name}-${++fieldSeq}`;
  let input;
  if (opts.options) {
    // Defaults as attributes (`selected`, `defaultValue`), so that a form's reset() comes back to them.
    input = el("select", { id, name }, opts.options.map((o) => el("option", { value: o, selected: o === opts.value }, o)));
  } else if (opts.type === "textarea") {
    input = el("textarea", { id, name, placeholder: opts.placeholder, rows: opts.rows, class: opts.inputClass });
    if (opts.value !== undefined) input.defaultValue = opts.value;
  } else if (opts.type === "checkbox") {
    input = el("input", { id, name, type: "checkbox" });
    // The default too, so that a form's reset() comes back to it.
    input.defaultChecked = !!opts.value;
    input.checked = !!opts.value;
    return el("div", { class: `field check ${opts.wide ? "wide" : ""}`, dataset: { field: name } },
      input, el("label", { for: id }, label), el("span", { class: "field-error", id: `${id}-err` }));
  } else {
    input = el("input", {
      id, name, type: opts.type || "text", placeholder: opts.placeholder, required: opts.required,
      autocomplete: opts.autocomplete || "off", inputmode: opts.inputmode,
    });
    if (opts.value !== undefined) input.defaultValue = opts.value;
  }
  const err = el("span", { class: "field-error", id: `${id}-err` });
  input.setAttribute("aria-describedby", `${id}-err`);
  return el("div", { class: `field ${opts.wide ? "wide" : ""}`, dataset: { field: name } },
    el("label", { for: id }, label), input,
    opts.hint ? el("span", { class: "hint" }, opts.hint) : null, err);
}

/** The box showing an API error: its message, and its per-field errors as a list. */
export function errorBox(err) {
  const box = el("div", { class: "error-box", role: "alert" }, el("strong", {}, err.message || String(err)));
  if (err.status === 429 && err.retryAfter !== undefined) {
    box.append(el("div", {}, `Try again in ${err.retryAfter} s.`));
  }
  if (err.errors && err.errors.length > 1) {
    box.append(el("ul", {}, err.errors.map((e) => el("li", {}, el("code", {}, e.field), ": ", e.message))));
  }
  return box;
}

/** The last name of a JSON path: `applications[0].microservices[0].memory` → `memory`. */
export function leafOf(path) {
  const last = String(path || "").split(".").pop() || "";
  return last.replace(/\[\d+\]$/, "");
}

/**
 * Shows an API error in `status` and each field error next to the form's field of that name
 * (by the last element of its JSON path).
 */
export function showFormError(form, status, err) {
  clearFormErrors(form);
  clear(status, errorBox(err));
  const list = err.errors && err.errors.length ? err.errors : (err.field ? [{ field: err.field, message: err.message }] : []);
  for (const e of list) {
    const wrap = form.querySelector(`[data-field="${CSS.escape(leafOf(e.field))}"]`);
    if (!wrap) continue;
    const input = wrap.querySelector("input, select, textarea");
    if (input) input.setAttribute("aria-invalid", "true");
    const span = wrap.querySelector(".field-error");
    if (span) span.textContent = span.textContent ? `${span.textContent}; ${e.message}` : e.message;
  }
}

export function clearFormErrors(form) {
  form.querySelectorAll("[aria-invalid]").forEach((n) => n.removeAttribute("aria-invalid"));
  form.querySelectorAll(".field-error").forEach((n) => { n.textContent = ""; });
}

/** A modal yes/no question; resolves true on confirm. */
export function confirmAction(question, confirmLabel = "Delete") {
  return new Promise((resolve) => {
    const dialog = el("dialog", { "aria-label": "Confirm" });
    const done = (answer) => {
      dialog.close();
      dialog.remove();
      resolve(answer);
    };
    dialog.append(
      el("p", {}, question),
      el("div", { class: "actions" },
        el("button", { type: "button", class: "danger", "data-confirm": "yes", onclick: () => done(true) }, confirmLabel),
        el("button", { type: "button", class: "secondary", onclick: () => done(false) }, "Cancel")));
    dialog.addEventListener("cancel", () => done(false));
    document.body.append(dialog);
    dialog.showModal();
  });
}

/**
 * Asks `question`; confirmed, sends DELETE to `path` and says `done`, or shows the API's error in
 * `status`. Then `reload()`, either way (someone else may have deleted it meanwhile).
 */
export async function confirmDelete(question, path, done, status, reload) {
  if (!await confirmAction(question)) return;
  try {
    await call("DELETE", path);
    toast(done);
  } catch (err) {
    clear(status, errorBox(err));
  }
  reload();
}

let toastTimer;
export function toast(text) {
  const t = document.getElementById("toast");
  t.textContent = text;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => { t.textContent = ""; }, 4000);
}

export function fmt(v, digits = 1) {
  if (v === undefined || v === null || v === "") return "–";
  if (typeof v === "number") return Number.isInteger(v) ? String(v) : v.toFixed(digits);
  return String(v);
}

export function statusBadge(s) {
  const cls = ["RUNNING", "FAILED", "DEAD"].includes(s) ? s : "pending";
  return el("span", { class: `status ${cls}` }, s || "–");
}
