// The logged-in user's account: change the password (POST /api/user/{name}).
import * as api from "../api.js";
import { clear, el, field, showFormError } from "../ui.js";

export const title = "Account";

export function render(main) {
  const user = api.session().user;
  const status = el("div", { id: "password-status" });
  const submit = el("button", { type: "submit" }, "Change password");
  const form = el("form", { class: "card narrow", id: "password-form", novalidate: true },
    el("h1", {}, `Account ${user}`),
    el("p", { class: "muted" }, "Roles: ", api.roles().join(", ") || "none"),
    el("h2", {}, "Change password"),
    field("oldPassword", "Current password", { type: "password", autocomplete: "current-password" }),
    field("newPassword", "New password", { type: "password", autocomplete: "new-password" }),
    field("repeat", "New password again", { type: "password", autocomplete: "new-password" }),
    el("p", { class: "actions" }, submit),
    status);
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const d = new FormData(form);
    if (d.get("newPassword") !== d.get("repeat")) {
      showFormError(form, status, { message: "The new passwords differ.", field: "repeat" });
      return;
    }
    submit.disabled = true;
    try {
      await api.call("POST", `/api/user/${api.enc(user)}`, {
        oldPassword: String(d.get("oldPassword")), newPassword: String(d.get("newPassword")),
      });
      // The change revoked every token of the account, this session's too: log in again.
      await api.login(user, String(d.get("newPassword")), api.session().organization);
      form.reset();
      clear(status, el("div", { class: "ok-box" }, "Password changed. Other sessions of this account are logged out."));
    } catch (err) {
      showFormError(form, status, err);
    } finally {
      submit.disabled = false;
    }
  });
  main.append(form);
}
