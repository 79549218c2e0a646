// One service: its descriptor, its instances (polled every 2 s), deploy / undeploy, and an
// instance's output followed live.
import * as api from "../api.js";
import { clear, confirmAction, el, errorBox, fmt, statusBadge, table, toast } from "../ui.js";

export const title = "Service";

const POLL_MS = 2000;

/** A long id's first characters, the whole one as its tooltip. */
function short(id) {
  if (!id) return "–";
  return id.length > 10 ? el("span", { title: id }, `${id.slice(0, 8)}…`) : id;
}

/** A name with the id as its tooltip, or the short id when the name is not known. */
function named(name, id) {
  return name ? el("span", { title: id ? `id ${id}` : undefined }, name) : short(id);
}

function mib(bytes) {
  return bytes === undefined || bytes === null ? "–" : `${(bytes / 1048576).toFixed(1)} MiB`;
}

export async function render(main, [serviceId]) {
  let stopped = false;
  let timer = null;
  let logAbort = null;
  let service = null;
  const heading = el("h1", {}, "Service");
  const back = el("p", {}, el("a", { href: "#/apps" }, "← Applications"));
  const details = el("dl", { class: "kv card", id: "service-details" });
  const status = el("div", { id: "instance-status" });
  const instances = el("div", { id: "instances" }, el("p", { class: "muted" }, "Loading…"));
  const updated = el("span", { class: "muted", id: "updated" });
  const logTitle = el("h2", { id: "logs-title" }, "Logs");
  const logs = el("pre", { class: "logs", id: "logs", tabindex: "0", "aria-live": "off" });
  const logStatus = el("div", { id: "logs-status" });
  const stopLogs = el("button", { type: "button", class: "secondary small", id: "logs-stop", hidden: true }, "Stop following");
  const logPanel = el("section", { class: "card", id: "log-panel", hidden: true, "aria-labelledby": "logs-title" },
    el("div", { class: "actions" }, logTitle, stopLogs), logStatus, logs);
  stopLogs.addEventListener("click", () => endLogs());

  const deploy = el("button", { type: "button", id: "deploy" }, "Deploy an instance");
  const undeployAll = el("button", { type: "button", class: "danger", id: "undeploy-all" }, "Undeploy all");
  deploy.addEventListener("click", async () => {
    deploy.disabled = true;
    try {
      const r = await api.call("POST", `/api/service/${api.enc(serviceId)}/instance`);
      toast(`Instance ${r.instance_number} requested (${r.status})`);
      clear(status);
    } catch (err) {
      clear(status, errorBox(err));
    } finally {
      deploy.disabled = false;
    }
    poll();
  });
  undeployAll.addEventListener("click", async () => {
    const list = (service && service.instance_list) || [];
    if (!list.length) return;
    if (!await confirmAction(`Undeploy all ${list.length} instances of ${service.service_name}?`, "Undeploy")) return;
    await undeploy(list.map((i) => i.instance_number));
  });

  async function undeploy(numbers) {
    clear(status);
    for (const n of numbers) {
      try {
        await api.call("DELETE", `/api/service/${api.enc(serviceId)}/instance/${n}`);
        toast(`Instance ${n} undeployed`);
      } catch (err) {
        status.append(errorBox(err));
      }
    }
    poll();
  }

  function endLogs() {
    if (logAbort) logAbort.abort();
    logAbort = null;
    stopLogs.hidden = true;
  }

  async function openLogs(n) {
    endLogs();
    logPanel.hidden = false;
    logTitle.textContent = `Logs of instance ${n}`;
    logs.textContent = "";
    clear(logStatus, el("p", { class: "muted" }, "Following (last 100 lines)…"));
    stopLogs.hidden = false;
    const abort = new AbortController();
    logAbort = abort;
    try {
      await api.followLogs(serviceId, n, (text) => {
        const atEnd = logs.scrollTop + logs.clientHeight >= logs.scrollHeight - 4;
        logs.append(document.createTextNode(text));
        if (atEnd) logs.scrollTop = logs.scrollHeight;
      }, abort.signal);
      if (logAbort === abort) clear(logStatus, el("p", { class: "muted" }, "The log stream ended."));
    } catch (err) {
      if (abort.signal.aborted) {
        if (logAbort === null) clear(logStatus, el("p", { class: "muted" }, "Stopped following."));
      } else {
        clear(logStatus, errorBox(err));
      }
    } finally {
      if (logAbort === abort) {
        logAbort = null;
        stopLogs.hidden = true;
      }
    }
  }

  function showDetails(s) {
    heading.textContent = `Service ${s.service_name}`;
    clear(back, el("a", { href: `#/app/${encodeURIComponent(s.applicationID)}` }, `← Application ${s.app_name}`));
    const rows = [
      ["Status", statusBadge(s.status)], ["Status detail", s.status_detail || "–"],
      ["Job name", s.job_name], ["Image", s.image], ["Virtualization", s.virtualization],
      ["Memory", s.memory !== undefined ? `${s.memory} MB` : "–"], ["vCPUs", fmt(s.vcpus)],
      ["Port", s.port || "–"], ["Command", (s.cmd || []).join(" ") || "–"], ["One-shot", s.one_shot ? "yes" : "no"], ["Round-robin IP", s.RR_ip || "–"], ["Closest IP", s.closest_ip || "–"],
    ];
    clear(details, rows.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v ?? "–")]));
  }

  function showInstances(s) {
    const list = s.instance_list || [];
    undeployAll.disabled = !list.length;
    clear(instances, table([
      { title: "#", cell: (i) => String(i.instance_number) },
      { title: "Status", cell: (i) => statusBadge(i.status) },
      { title: "Detail", cell: (i) => i.status_detail || "" },
      { title: "Cluster", cell: (i) => [named(i.cluster_name, i.cluster_id), i.cluster_location ? ` (${i.cluster_location})` : ""], class: "cluster" },
      { title: "Worker", cell: (i) => named(i.worker_name, i.worker_id), class: "worker" },
      { title: "Node IP", cell: (i) => fmt(i.publicip || i.host_ip), class: "mono node-ip" },
      { title: "Ports", cell: () => s.port || "–", class: "mono" },
      { title: "Instance IP", cell: (i) => fmt(i.instance_ip), class: "mono" },
      { title: "RR IP", cell: () => fmt(s.RR_ip), class: "mono" },
      { title: "CPU", cell: (i) => (i.cpu_percent === undefined || i.cpu_percent === null ? "–" : `${fmt(i.cpu_percent)} %`) },
      { title: "Memory", cell: (i) => mib(i.memory_bytes), class: "nowrap memory" },
      { title: "", cell: (i) => el("div", { class: "actions nowrap" },
        el("button", { type: "button", class: "secondary small", "aria-label": `Logs of instance ${i.instance_number}`,
          dataset: { logs: i.instance_number }, onclick: () => openLogs(i.instance_number) }, "Logs"),
        el("button", { type: "button", class: "danger small", "aria-label": `Undeploy instance ${i.instance_number}`,
          dataset: { undeploy: i.instance_number }, onclick: () => undeploy([i.instance_number]) }, "Undeploy")) },
    ], list, "No instances: deploy one.", { id: "instances-table" }));
  }

  async function poll() {
    clearTimeout(timer);
    if (stopped) return;
    try {
      service = await api.get(`/api/service/${api.enc(serviceId)}`);
      if (stopped) return;
      showDetails(service);
      showInstances(service);
      updated.textContent = `Updated ${new Date().toLocaleTimeString()}`;
    } catch (err) {
      if (stopped) return;
      clear(instances, errorBox(err));
      if (err.status === 404 || err.status === 401) return;
    }
    timer = setTimeout(poll, POLL_MS);
  }

  main.append(back, heading, details,
    el("h2", {}, "Instances"),
    el("div", { class: "actions" }, deploy, undeployAll, updated),
    status, instances, logPanel);
  await poll();
  return () => {
    stopped = true;
    clearTimeout(timer);
    endLogs();
  };
}
