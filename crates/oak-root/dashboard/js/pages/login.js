import * as api from "../api.js";
import { clear, el, errorBox, field } from "../ui.js";

export const title = "Log in";

export function render(main) {
  const status = el("div", { id: "login-status" });
  const org = field("organization", "Organization", { hint: "Leave empty for the root organization." });
  org.hidden = true;
  const toggle = el("button", { type: "button", class: "secondary small", "aria-expanded": "false" }, "Log in to an organization");
  toggle.addEventListener("click", () => {
    org.hidden = !org.hidden;
    toggle.setAttribute("aria-expanded", String(!org.hidden));
    if (!org.hidden) org.querySelector("input").focus();
  });
  const submit = el("button", { type: "submit", id: "login-submit" }, "Log in");
  const form = el("form", { class: "card narrow", id: "login-form", novalidate: true },
    el("h1", {}, "Log in to Oakestra"),
    el("div", { class: "grid-1" },
      field("username", "User name", { required: true, autocomplete: "username" }),
      field("password", "Password", { type: "password", required: true, autocomplete: "current-password" }),
      org),
    el("p", { class: "actions" }, submit, toggle),
    status);
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const data = new FormData(form);
    const username = String(data.get("username") || "").trim();
    const password = String(data.get("password") || "");
    if (!username || !password) {
      clear(status, errorBox({ message: "User name and password are needed." }));
      return;
    }
    submit.disabled = true;
    clear(status, el("p", { class: "muted" }, "Logging in…"));
    let failure = null;
    try {
      await api.login(username, password, String(data.get("organization") || "").trim());
    } catch (err) {
      failure = err;
    }
    // Ready for the next attempt before the answer shows.
    submit.disabled = false;
    if (failure) clear(status, errorBox(failure));
    else location.hash = "#/apps";
  });
  main.append(form);
  form.querySelector("input").focus();
}
