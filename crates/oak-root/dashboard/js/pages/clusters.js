// Infrastructure: the clusters with location, capacity and usage, each with its workers (a
// section per cluster, open by default for a few clusters; workers are fetched only for open
// sections); Admin issues join tokens.
import * as api from "../api.js";
import { clear, el, errorBox, fmt, table } from "../ui.js";

export const title = "Infrastructure";

const POLL_MS = 5000;
/** Up to this many clusters, their worker sections start open. */
const OPEN_BY_DEFAULT = 3;

function state(active) {
  return el("span", { class: `status ${active ? "active" : "inactive"}` }, active ? "active" : "inactive");
}

function workersTable(clusterId, workers) {
  return table([
    { title: "Worker", cell: (w) => el("span", { title: `id ${w.id}`, class: "worker-name" }, w.name || w.id) },
    { title: "Address", cell: (w) => [w.address || "–", w.public_address ? ` (public ${w.public_address})` : ""], class: "mono" },
    { title: "State", cell: (w) => state(w.active) },
    { title: "Arch", cell: (w) => w.architecture || "–" },
    { title: "Virtualization", cell: (w) => (w.virtualization || []).join(", ") || "–" },
    { title: "CPU cores", cell: (w) => fmt(w.cpu_cores) },
    { title: "CPU used", cell: (w) => `${fmt(w.cpu_percent)} %`, class: "nowrap" },
    { title: "Memory", cell: (w) => `${fmt(w.memory_total_mb)} MB`, class: "nowrap" },
    { title: "Memory used", cell: (w) => `${fmt(w.memory_used_mb)} MB (${fmt(w.memory_free_mb)} MB free)`, class: "nowrap" },
  ], workers, "No worker has registered with this cluster.", { class: "workers-table", dataset: { cluster: clusterId } });
}

export async function render(main) {
  let stopped = false;
  let timer = null;
  const list = el("div", { id: "clusters-list" }, el("p", { class: "muted" }, "Loading…"));
  const workers = el("div", { id: "workers-list" });
  /** Cluster id → whether its worker section is open (as the user left it). */
  const open = new Map();
  const tokenStatus = el("div", { id: "token-status" });
  const issue = el("button", { type: "button", id: "issue-token" }, "Issue a cluster join token");
  issue.addEventListener("click", async () => {
    issue.disabled = true;
    try {
      const t = await api.call("POST", "/api/clusters/tokens");
      clear(tokenStatus, el("div", { class: "ok-box" },
        el("div", {}, "Join token for one cluster (shown once; id ", el("code", {}, t.id),
          ", revoke with ", el("code", {}, "oakestra cluster-token --revoke " + t.id), "; pass it to ",
          el("code", {}, "oakestra cluster --token"), "):"),
        el("code", { id: "cluster-token" }, t.token)));
    } catch (err) {
      clear(tokenStatus, errorBox(err));
    } finally {
      issue.disabled = false;
    }
  });

  async function showWorkers(clusters) {
    const sections = await Promise.all(clusters.map(async (c) => {
      const isOpen = open.get(c._id) ?? clusters.length <= OPEN_BY_DEFAULT;
      let body = el("p", { class: "muted" }, "Open to load the workers.");
      if (isOpen) {
        try {
          body = workersTable(c._id, (await api.get(`/api/clusters/${api.enc(c._id)}/workers`)).workers);
        } catch (err) {
          body = errorBox(err);
        }
      }
      const details = el("details", { class: "card workers", open: isOpen, dataset: { cluster: c._id } },
        el("summary", {}, `Workers of ${c.cluster_name} (${fmt(c.active_nodes)} active)`), body);
      // Also fired for the `open` set at creation: only a change by the user counts.
      details.addEventListener("toggle", () => {
        if ((open.get(c._id) ?? clusters.length <= OPEN_BY_DEFAULT) === details.open) return;
        open.set(c._id, details.open);
        if (details.open) load();
      });
      return details;
    }));
    if (!stopped) clear(workers, sections);
  }

  // One load at a time: a load asked for meanwhile (a section opened) runs when it ends.
  let loading = false;
  let again = false;

  async function load() {
    clearTimeout(timer);
    if (loading) {
      again = true;
      return;
    }
    loading = true;
    try {
      await loadOnce();
    } finally {
      loading = false;
    }
    if (stopped) return;
    if (again) {
      again = false;
      load();
    } else {
      timer = setTimeout(load, POLL_MS);
    }
  }

  async function loadOnce() {
    try {
      const clusters = await api.get("/api/clusters");
      if (stopped) return;
      clear(list, table([
        { title: "Cluster", cell: (c) => el("span", { title: `id ${c._id}` }, c.cluster_name) },
        { title: "Location", cell: (c) => c.cluster_location || "–" },
        { title: "State", cell: clusterState },
        { title: "Workers", cell: (c) => fmt(c.active_nodes) },
        { title: "CPU cores", cell: (c) => fmt(c.total_cpu_cores) },
        { title: "CPU used", cell: (c) => `${fmt(c.aggregated_cpu_percent ?? c.cpu_percent)} %`, class: "nowrap" },
        { title: "Memory", cell: (c) => `${fmt(c.memory_in_mb)} MB`, class: "nowrap" },
        { title: "Memory used", cell: (c) => `${fmt(c.memory_percent)} %`, class: "nowrap" },
        { title: "GPUs", cell: (c) => fmt(c.total_gpu_cores) },
        { title: "Virtualization", cell: (c) => (c.virtualization || []).join(", ") || "–" },
        { title: "Architectures", cell: (c) => Object.keys(c.aggregation_per_architecture || {}).join(", ") || "–" },
      ], clusters, "No cluster has joined yet.", { id: "clusters-table" }));
      await showWorkers(clusters);
    } catch (err) {
      clear(list, errorBox(err));
    }
  }

  main.append(el("h1", {}, "Infrastructure"), list, el("h2", {}, "Workers"), workers);
  if (api.isAdmin()) main.append(el("h2", {}, "Join a cluster"), el("div", { class: "card" }, issue, tokenStatus));
  await load();
  return () => {
    stopped = true;
    clearTimeout(timer);
  };
}

// `active`, `unreachable` (silent, instances stay) or `lost` (silent past the root's
// --cluster-timeout: its instances were placed elsewhere); older roots send only `active`.
const STATE_CLASS = { active: "active", unreachable: "pending", lost: "inactive" };

function clusterState(c) {
  const word = c.status || (c.active ? "active" : "inactive");
  return el("span", { class: `status ${STATE_CLASS[word] || "inactive"}` }, word);
}
