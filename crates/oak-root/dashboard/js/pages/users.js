// Users (Admin: all; Organization_Admin: the organization's members) and registering one.
import * as api from "../api.js";
import { clear, clearFormErrors, el, errorBox, field, showFormError, table, toast } from "../ui.js";

export const title = "Users";

const ROLES = ["Application_Provider", "Infrastructure_Provider", "Organization_Admin", "Admin"];

export async function render(main) {
  const list = el("div", { id: "users-list" }, el("p", { class: "muted" }, "Loading…"));
  const status = el("div");
  const submit = el("button", { type: "submit" }, "Register user");
  const roleBoxes = ROLES.map((r) => field(`role-${r}`, r, { type: "checkbox", value: r === "Application_Provider" }));
  const form = el("form", { class: "card grid", id: "user-form", novalidate: true },
    field("name", "User name", { required: true }),
    field("password", "Password", { type: "password", required: true, autocomplete: "new-password" }),
    field("email", "E-mail", { type: "email" }),
    el("fieldset", { class: "wide", "data-field": "roles" }, el("legend", {}, "Roles"), roleBoxes, el("span", { class: "field-error" })),
    el("div", { class: "actions wide" }, submit),
    el("div", { class: "wide" }, status));

  async function load() {
    try {
      const users = await api.get("/api/users");
      clear(list, table([
        { title: "Name", cell: (u) => u.name },
        { title: "E-mail", cell: (u) => u.email || "–" },
        { title: "Roles", cell: (u) => (u.roles || []).join(", ") || "–" },
        { title: "Created", cell: (u) => u.created_at || "–" },
      ], users, "No users.", { id: "users-table" }));
    } catch (err) {
      clear(list, errorBox(err));
    }
  }

  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    clearFormErrors(form);
    const d = new FormData(form);
    const body = {
      name: String(d.get("name") || "").trim(),
      password: String(d.get("password") || ""),
      email: String(d.get("email") || "").trim(),
      roles: ROLES.filter((r) => d.get(`role-${r}`) === "on"),
    };
    submit.disabled = true;
    try {
      await api.call("POST", "/api/auth/register", body);
      clear(status);
      form.reset();
      toast(`User ${body.name} registered`);
      load();
    } catch (err) {
      showFormError(form, status, err);
    } finally {
      submit.disabled = false;
    }
  });

  main.append(el("h1", {}, "Users"), list, el("h2", {}, "Register a user"), form);
  await load();
}
