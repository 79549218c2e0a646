// One application: its services, and adding one with a form or as pasted SLA / service JSON.
import * as api from "../api.js";
import {
  clear, clearFormErrors, confirmDelete, el, errorBox, field, fmt, showFormError, statusBadge, table, toast,
} from "../ui.js";

export const title = "Application";

const NUMBERS = ["memory", "vcpus", "vgpus", "vtpus", "storage", "bandwidth_in", "bandwidth_out"];

/** The microservice object of the form. Numbers that are not numbers go as typed: the API names the problem. */
export function microserviceOf(form) {
  const d = new FormData(form);
  const text = (k) => String(d.get(k) || "").trim();
  const lines = (k) => text(k).split("\n").map((s) => s.trim()).filter(Boolean);
  const ms = {
    microserviceID: "",
    microservice_name: text("microservice_name"),
    microservice_namespace: text("microservice_namespace"),
    virtualization: text("virtualization"),
    code: text("code"),
    cmd: lines("cmd"),
    environment: lines("environment"),
    one_shot: d.get("one_shot") === "on",
    privileged: d.get("privileged") === "on",
  };
  if (text("arch")) ms.arch = text("arch").split(",").map((s) => s.trim()).filter(Boolean);
  if (text("constraints")) {
    try {
      ms.constraints = JSON.parse(text("constraints"));
    } catch (e) {
      throw { message: `Constraints are not JSON: ${e.message}`, field: "constraints" };
    }
  }
  for (const k of NUMBERS) {
    const v = text(k);
    if (v !== "") ms[k] = /^-?\d+(\.\d+)?$/.test(v) ? Number(v) : v;
  }
  if (text("port")) ms.port = text("port");
  const addresses = {};
  if (text("rr_ip")) addresses.rr_ip = text("rr_ip");
  if (text("closest_ip")) addresses.closest_ip = text("closest_ip");
  if (Object.keys(addresses).length) ms.addresses = addresses;
  return ms;
}

export function serviceSla(appId, ms) {
  return {
    sla_version: "v2.0",
    customerID: api.session().user,
    applications: [{
      applicationID: appId, application_name: "", application_namespace: "", application_desc: "",
      microservices: [ms],
    }],
  };
}

/** Pasted text as an SLA for POST /api/service: a whole SLA, or one microservice object. */
export function pastedSla(appId, text) {
  let doc;
  try {
    doc = JSON.parse(text);
  } catch (e) {
    throw { message: `The text is not JSON: ${e.message}` };
  }
  if (doc && typeof doc === "object" && Array.isArray(doc.applications)) {
    if (doc.applications[0] && typeof doc.applications[0] === "object" && !doc.applications[0].applicationID) {
      doc.applications[0].applicationID = appId;
    }
    return doc;
  }
  if (doc && typeof doc === "object" && !Array.isArray(doc)) return serviceSla(appId, doc);
  throw { message: "Paste an SLA v2.0 document ({\"sla_version\": …, \"applications\": […]}) or one microservice object." };
}

const EXAMPLE = JSON.stringify({
  microserviceID: "", microservice_name: "nginx", microservice_namespace: "test", virtualization: "container",
  code: "docker.io/library/nginx:latest", memory: 100, vcpus: 1, port: "8080:80",
}, null, 2);

export async function render(main, [appId]) {
  const heading = el("h1", {}, "Application");
  const info = el("p", { class: "muted" });
  const list = el("div", { id: "services-list" }, el("p", { class: "muted" }, "Loading…"));
  const status = el("div", { id: "service-status" });

  async function load() {
    try {
      const [app, services] = await Promise.all([
        api.get(`/api/application/${api.enc(appId)}`),
        api.get(`/api/services/${api.enc(appId)}`),
      ]);
      heading.textContent = `Application ${app.application_name}`;
      clear(info, `Namespace ${app.application_namespace}`, app.application_desc ? ` · ${app.application_desc}` : "");
      clear(list, table([
        { title: "Service", cell: (s) => el("a", { href: `#/service/${encodeURIComponent(s._id)}` }, s.service_name) },
        { title: "Namespace", cell: (s) => s.service_ns },
        { title: "Image", cell: (s) => s.image, class: "mono" },
        { title: "Status", cell: (s) => statusBadge(s.status) },
        { title: "Instances", cell: (s) => String((s.instance_list || []).length) },
        { title: "RR IP", cell: (s) => fmt(s.RR_ip), class: "mono" },
        { title: "", cell: (s) => el("span", { class: "row-actions" },
          el("button", {
            type: "button", class: "secondary small", "aria-label": `Edit service ${s.service_name}`,
            onclick: () => edit(s),
          }, "Edit"),
          el("button", {
            type: "button", class: "danger small", "aria-label": `Delete service ${s.service_name}`,
            onclick: () => remove(s),
          }, "Delete")) },
      ], services, "No services yet: add one below.", { id: "services-table" }));
    } catch (err) {
      clear(list, errorBox(err));
    }
  }

  function remove(s) {
    return confirmDelete(
      `Delete the service "${s.service_name}" and its instances?`,
      `/api/service/${api.enc(s._id)}`,
      `Service ${s.service_name} deleted`,
      status,
      load);
  }

  async function create(sla, form, button) {
    if (editing) return save(form, button);
    button.disabled = true;
    try {
      const answer = await api.call("POST", "/api/service", sla);
      clear(status, el("div", { class: "ok-box" }, "Service created: ", el("a", {
        href: `#/service/${encodeURIComponent(answer.job_id)}`, id: "new-service-link",
      }, "open it to deploy")));
      clearFormErrors(form);
      load();
    } catch (err) {
      showFormError(form, status, err);
    } finally {
      button.disabled = false;
    }
  }

  // The service being edited (its descriptor replaced with PUT), or null while adding.
  let editing = null;
  const formTitle = el("h2", {}, "Add a service");
  const cancel = el("button", { type: "button", class: "secondary", hidden: true, onclick: () => edit(null) }, "Cancel");

  async function save(form, button) {
    button.disabled = true;
    try {
      const ms = { ...microserviceOf(form), microserviceID: editing._id }; // may throw on bad constraints
      await api.call("PUT", `/api/service/${api.enc(editing._id)}`, ms);
      toast(`Service ${ms.microservice_name} saved`);
      edit(null);
      load();
    } catch (err) {
      showFormError(form, status, err);
    } finally {
      button.disabled = false;
    }
  }

  /** Fills the form with `s`'s descriptor to edit it, or empties it to add a service (null). */
  function edit(s) {
    editing = s;
    select(true);
    clearFormErrors(form);
    form.reset();
    if (s) {
      const set = (name, value) => {
        const input = form.elements[name];
        if (!input) return; // a field this form does not show (vgpus)
        if (input.type === "checkbox") input.checked = !!value;
        else input.value = value === undefined || value === null ? "" : String(value);
      };
      set("microservice_name", s.service_name);
      set("microservice_namespace", s.service_ns);
      set("virtualization", s.virtualization === "docker" ? "container" : s.virtualization);
      set("code", s.code || s.image);
      for (const k of NUMBERS) set(k, s[k] ?? 0);
      set("port", s.port);
      set("rr_ip", (s.addresses && s.addresses.rr_ip) || "");
      set("closest_ip", (s.addresses && s.addresses.closest_ip) || "");
      set("cmd", (s.cmd || []).join("\n"));
      set("environment", (s.environment || []).join("\n"));
      set("one_shot", s.one_shot);
      set("privileged", s.privileged);
      set("arch", (s.arch || []).join(", "));
      set("constraints", s.constraints && s.constraints.length ? JSON.stringify(s.constraints) : "");
    }
    formTitle.textContent = s ? `Edit service ${s.service_name}` : "Add a service";
    submit.textContent = s ? "Save changes" : "Add service";
    cancel.hidden = !s;
    tabPaste.hidden = !!s;
    if (s) form.elements.microservice_name.focus();
  }

  const submit = el("button", { type: "submit" }, "Add service");
  const form = el("form", { class: "grid", id: "service-form", novalidate: true },
    field("microservice_name", "Name", { required: true, placeholder: "e.g. server" }),
    field("microservice_namespace", "Namespace", { required: true, placeholder: "e.g. test" }),
    field("virtualization", "Virtualization", { options: ["container", "unikernel"] }),
    field("code", "Code (image)", { required: true, placeholder: "docker.io/library/nginx:latest" }),
    field("memory", "Memory (MB)", { value: "100", inputmode: "numeric" }),
    field("vcpus", "vCPUs", { value: "1", inputmode: "numeric" }),
    field("port", "Port", { placeholder: "8080:80;53/udp", hint: "host:container[/proto], ; between mappings" }),
    field("rr_ip", "Round-robin IP", { placeholder: "10.30.x.y (optional)" }),
    field("closest_ip", "Closest IP", { placeholder: "10.30.x.y (optional)" }),
    field("storage", "Storage (MB)", { value: "0", inputmode: "numeric" }),
    field("vgpus", "vGPUs", { value: "0", inputmode: "numeric" }),
    field("vtpus", "vTPUs", { value: "0", inputmode: "numeric" }),
    field("bandwidth_in", "Bandwidth in", { value: "0", inputmode: "numeric" }),
    field("bandwidth_out", "Bandwidth out", { value: "0", inputmode: "numeric" }),
    field("arch", "Architectures", { placeholder: "amd64, arm64 (optional)", hint: "for unikernels: one code URL per architecture" }),
    field("cmd", "Command", { type: "textarea", rows: 3, hint: "one argument per line; replaces the image's entrypoint" }),
    field("environment", "Environment", { type: "textarea", rows: 3, hint: "one NAME=value per line" }),
    field("constraints", "Constraints (JSON)", {
      type: "textarea", rows: 3, wide: true,
      placeholder: '[{"type": "direct", "node": "worker-1", "cluster": "edge-1"}]',
      hint: "placement constraints as an array (direct, clusters, addons, geo, latency); optional",
    }),
    field("one_shot", "One-shot (runs to completion, not restarted)", { type: "checkbox" }),
    field("privileged", "Privileged (Admin or roles the operator trusts)", { type: "checkbox" }),
    el("div", { class: "actions wide" }, submit, cancel));
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    if (editing) {
      save(form, submit);
      return;
    }
    let ms;
    try {
      ms = microserviceOf(form);
    } catch (err) {
      showFormError(form, status, err);
      return;
    }
    create(serviceSla(appId, ms), form, submit);
  });

  const pasteSubmit = el("button", { type: "submit" }, "Add from JSON");
  const upload = el("input", { type: "file", id: "sla-file", accept: ".json,application/json" });
  const paste = el("form", { class: "grid", id: "paste-form", hidden: true, novalidate: true },
    field("sla", "SLA v2.0 document or one microservice", {
      type: "textarea", wide: true, value: EXAMPLE, inputClass: "sla",
      hint: "An SLA's first application is this one when its applicationID is empty.",
    }),
    el("div", { class: "field wide" }, el("label", { for: "sla-file" }, "…or load it from a file"), upload),
    el("div", { class: "actions wide" }, pasteSubmit));
  upload.addEventListener("change", async () => {
    const file = upload.files && upload.files[0];
    if (!file) return;
    if (file.size > 64 * 1024) {
      showFormError(paste, status, { message: `${file.name} is larger than the API's 64 KiB limit` });
      return;
    }
    paste.querySelector("textarea").value = await file.text();
    clear(status, el("div", { class: "ok-box" }, `Loaded ${file.name}: check it, then add it.`));
  });
  paste.addEventListener("submit", (e) => {
    e.preventDefault();
    let sla;
    try {
      sla = pastedSla(appId, paste.querySelector("textarea").value);
    } catch (err) {
      showFormError(paste, status, err);
      return;
    }
    create(sla, paste, pasteSubmit);
  });

  const tabForm = el("button", { type: "button", role: "tab", "aria-selected": "true", id: "tab-form" }, "Form");
  const tabPaste = el("button", { type: "button", role: "tab", "aria-selected": "false", id: "tab-json" }, "Paste JSON");
  const select = (formTab) => {
    form.hidden = !formTab;
    paste.hidden = formTab;
    tabForm.setAttribute("aria-selected", String(formTab));
    tabPaste.setAttribute("aria-selected", String(!formTab));
    clear(status);
  };
  tabForm.addEventListener("click", () => select(true));
  tabPaste.addEventListener("click", () => select(false));

  main.append(
    el("p", {}, el("a", { href: "#/apps" }, "← Applications")),
    heading, info, list,
    formTitle,
    el("div", { class: "card" }, el("div", { class: "tabs", role: "tablist" }, tabForm, tabPaste), form, paste, status));
  await load();
}
