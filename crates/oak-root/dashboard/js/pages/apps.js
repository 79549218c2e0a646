import * as api from "../api.js";
import { clear, clearFormErrors, confirmDelete, el, errorBox, field, showFormError, table, toast } from "../ui.js";

export const title = "Applications";

/** An SLA v2.0 document creating one application without services. */
export function applicationSla(name, namespace, desc) {
  return {
    sla_version: "v2.0",
    customerID: api.session().user,
    applications: [{
      applicationID: "", application_name: name, application_namespace: namespace,
      application_desc: desc, microservices: [],
    }],
  };
}

export async function render(main) {
  const list = el("div", { id: "apps-list" }, el("p", { class: "muted" }, "Loading…"));
  const status = el("div");
  const formTitle = el("h2", {}, "New application");
  const submit = el("button", { type: "submit" }, "Create application");
  const cancel = el("button", { type: "button", class: "secondary", hidden: true, onclick: () => edit(null) }, "Cancel");
  const form = el("form", { class: "card grid", id: "app-form", novalidate: true },
    field("application_name", "Name", { required: true, placeholder: "e.g. web" }),
    field("application_namespace", "Namespace", { required: true, placeholder: "e.g. test" }),
    field("application_desc", "Description", { wide: true }),
    el("div", { class: "actions wide" }, submit, cancel),
    el("div", { class: "wide" }, status));
  // The application being edited, or null while the form creates one.
  let editing = null;

  /** Switches the form to editing `a` (filled with its values), or back to creating (null). */
  function edit(a) {
    editing = a;
    clearFormErrors(form);
    clear(status);
    form.reset();
    if (a) {
      form.elements.application_name.value = a.application_name;
      form.elements.application_namespace.value = a.application_namespace;
      form.elements.application_desc.value = a.application_desc || "";
    }
    formTitle.textContent = a ? `Edit application ${a.application_name}` : "New application";
    submit.textContent = a ? "Save changes" : "Create application";
    cancel.hidden = !a;
    if (a) form.elements.application_name.focus();
  }

  async function load() {
    try {
      const apps = await api.get("/api/applications");
      clear(list, table([
        { title: "Name", cell: (a) => el("a", { href: `#/app/${encodeURIComponent(a._id)}` }, a.application_name) },
        { title: "Namespace", cell: (a) => a.application_namespace },
        { title: "Description", cell: (a) => a.application_desc },
        { title: "Services", cell: (a) => String((a.microservices || []).length) },
        { title: "Owner", cell: (a) => a.userId },
        { title: "", cell: (a) => el("span", { class: "row-actions" },
          el("button", {
            type: "button", class: "secondary small", "aria-label": `Edit application ${a.application_name}`,
            onclick: () => edit(a),
          }, "Edit"),
          el("button", {
            type: "button", class: "danger small", "aria-label": `Delete application ${a.application_name}`,
            onclick: () => remove(a),
          }, "Delete")) },
      ], apps, "No applications yet: create one below.", { id: "apps-table" }));
    } catch (err) {
      clear(list, errorBox(err));
    }
  }

  function remove(a) {
    return confirmDelete(
      `Delete the application "${a.application_name}" with all its services and instances?`,
      `/api/application/${api.enc(a._id)}`,
      `Application ${a.application_name} deleted`,
      status,
      load);
  }

  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    clearFormErrors(form);
    const d = new FormData(form);
    const name = String(d.get("application_name")).trim();
    const namespace = String(d.get("application_namespace")).trim();
    const desc = String(d.get("application_desc")).trim();
    submit.disabled = true;
    try {
      if (editing) {
        await api.call("PUT", `/api/application/${api.enc(editing._id)}`,
          { application_name: name, application_namespace: namespace, application_desc: desc });
        toast(`Application ${name} saved`);
      } else {
        await api.call("POST", "/api/application", applicationSla(name, namespace, desc));
        toast(`Application ${name} created`);
      }
      edit(null);
      load();
    } catch (err) {
      showFormError(form, status, err);
    } finally {
      submit.disabled = false;
    }
  });

  main.append(el("h1", {}, "Applications"), list, formTitle, form);
  await load();
}
