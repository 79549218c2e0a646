// Users (Admin: all; Organization_Admin: the organization's members), registering and deleting one, and organizations (Admin).
import * as api from "../api.js";
import { clear, clearFormErrors, confirmDelete, el, errorBox, field, showFormError, table, toast } from "../ui.js";

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
        { title: "", cell: (u) => u.name === api.session().user ? "" : el("button", {
          type: "button", class: "danger small", "aria-label": `Delete user ${u.name}`, onclick: () => removeUser(u),
        }, "Delete") },
      ], users, "No users.", { id: "users-table" }));
    } catch (err) {
      clear(list, errorBox(err));
    }
  }

  function removeUser(u) {
    return confirmDelete(
      `Delete the user "${u.name}"? Their tokens stop working at once.`,
      `/api/user/${api.enc(u.name)}`,
      `User ${u.name} deleted`,
      status,
      load);
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
  if (api.isAdmin()) await organizations(main);
}

/** Organizations (Admin only): list, create, delete. Members get their roles when registered. */
async function organizations(main) {
  const list = el("div", { id: "orgs-list" }, el("p", { class: "muted" }, "Loading…"));
  const status = el("div");
  const submit = el("button", { type: "submit" }, "Create organization");
  const form = el("form", { class: "card grid", id: "org-form", novalidate: true },
    field("name", "Name", { required: true, placeholder: "e.g. lab-a" }),
    el("div", { class: "actions wide" }, submit),
    el("div", { class: "wide" }, status));

  async function load() {
    try {
      const orgs = await api.get("/api/organization");
      clear(list, table([
        { title: "Organization", cell: (o) => o.name },
        { title: "Members", cell: (o) => String((o.member || []).length) },
        { title: "Id", cell: (o) => o._id, class: "mono" },
        { title: "", cell: (o) => o.name === "root" ? "" : el("button", {
          type: "button", class: "danger small", "aria-label": `Delete organization ${o.name}`, onclick: () => remove(o),
        }, "Delete") },
      ], orgs, "No organizations.", { id: "orgs-table" }));
    } catch (err) {
      clear(list, errorBox(err));
    }
  }

  function remove(o) {
    return confirmDelete(
      `Delete the organization "${o.name}"? Its members lose the roles they hold there.`,
      `/api/organization/${api.enc(o._id)}`,
      `Organization ${o.name} deleted`,
      status,
      load);
  }

  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    clearFormErrors(form);
    const name = String(new FormData(form).get("name") || "").trim();
    submit.disabled = true;
    try {
      await api.call("POST", "/api/organization", { name, member: [] });
      clear(status);
      form.reset();
      toast(`Organization ${name} created`);
      load();
    } catch (err) {
      showFormError(form, status, err);
    } finally {
      submit.disabled = false;
    }
  });

  main.append(el("h2", {}, "Organizations"), list, el("h2", {}, "New organization"), form);
  await load();
}
