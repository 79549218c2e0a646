// Infrastructure: the clusters with location, capacity and usage; Admin issues join tokens.
import * as api from "../api.js";
import { clear, el, errorBox, fmt, table } from "../ui.js";

export const title = "Infrastructure";

const POLL_MS = 5000;

export async function render(main) {
  let stopped = false;
  let timer = null;
  const list = el("div", { id: "clusters-list" }, el("p", { class: "muted" }, "Loading…"));
  const tokenStatus = el("div", { id: "token-status" });
  const issue = el("button", { type: "button", id: "issue-token" }, "Issue a cluster join token");
  issue.addEventListener("click", async () => {
    issue.disabled = true;
    try {
      const t = await api.call("POST", "/api/clusters/tokens");
      clear(tokenStatus, el("div", { class: "ok-box" },
        el("div", {}, "Join token (shown once; pass it to ", el("code", {}, "oakestra cluster --token"), "):"),
        el("code", { id: "cluster-token" }, t.token)));
    } catch (err) {
      clear(tokenStatus, errorBox(err));
    } finally {
      issue.disabled = false;
    }
  });

  async function load() {
    try {
      const clusters = await api.get("/api/clusters");
      if (stopped) return;
      clear(list, table([
        { title: "Cluster", cell: (c) => el("span", { title: `id ${c._id}` }, c.cluster_name) },
        { title: "Location", cell: (c) => c.cluster_location || "–" },
        { title: "State", cell: (c) => el("span", { class: `status ${c.active ? "active" : "inactive"}` }, c.active ? "active" : "inactive") },
        { title: "Workers", cell: (c) => fmt(c.active_nodes) },
        { title: "CPU cores", cell: (c) => fmt(c.total_cpu_cores) },
        { title: "CPU used", cell: (c) => `${fmt(c.aggregated_cpu_percent ?? c.cpu_percent)} %`, class: "nowrap" },
        { title: "Memory", cell: (c) => `${fmt(c.memory_in_mb)} MB`, class: "nowrap" },
        { title: "Memory used", cell: (c) => `${fmt(c.memory_percent)} %`, class: "nowrap" },
        { title: "GPUs", cell: (c) => fmt(c.total_gpu_cores) },
        { title: "Virtualization", cell: (c) => (c.virtualization || []).join(", ") || "–" },
        { title: "Architectures", cell: (c) => Object.keys(c.aggregation_per_architecture || {}).join(", ") || "–" },
      ], clusters, "No cluster has joined yet.", { id: "clusters-table" }));
    } catch (err) {
      clear(list, errorBox(err));
    }
    if (!stopped) timer = setTimeout(load, POLL_MS);
  }

  main.append(el("h1", {}, "Infrastructure"), list);
  if (api.isAdmin()) main.append(el("h2", {}, "Join a cluster"), el("div", { class: "card" }, issue, tokenStatus));
  await load();
  return () => {
    stopped = true;
    clearTimeout(timer);
  };
}
