// The router: `#/<page>/<arg>` picks a page module; each page's render(main, args) may return
// a function that stops what it started (polling, a log stream) when the page is left.
import * as api from "./api.js";
import { clear, el } from "./ui.js";
import * as login from "./pages/login.js";
import * as apps from "./pages/apps.js";
import * as services from "./pages/services.js";
import * as service from "./pages/service.js";
import * as clusters from "./pages/clusters.js";
import * as users from "./pages/users.js";
import * as account from "./pages/account.js";

// Errors the page did not handle, for whoever looks (the end-to-end test reads them).
window.oakErrors = [];
window.addEventListener("error", (e) => window.oakErrors.push(String(e.message || e)));
window.addEventListener("unhandledrejection", (e) => window.oakErrors.push(String(e.reason && e.reason.message || e.reason)));

const PAGES = { login, apps, app: services, service, clusters, users, account };
let leave = null;

function current() {
  const parts = (location.hash || "").replace(/^#\/?/, "").split("/").filter(Boolean).map(decodeURIComponent);
  return { page: parts[0] || "apps", args: parts.slice(1) };
}

function chrome(loggedIn, page) {
  document.getElementById("nav").hidden = !loggedIn;
  document.getElementById("logout").hidden = !loggedIn;
  const s = api.session();
  const who = document.getElementById("who");
  who.textContent = loggedIn && s ? s.user : "";
  who.title = loggedIn ? `Roles: ${api.roles().join(", ") || "none"}` : "";
  const roles = api.roles();
  document.getElementById("nav-users").hidden = !(roles.includes("Admin") || roles.includes("Organization_Admin"));
  const section = page === "app" || page === "service" ? "apps" : page;
  for (const a of document.querySelectorAll("#nav a")) {
    if (a.dataset.page === section) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
}

async function route() {
  if (leave) {
    leave();
    leave = null;
  }
  let { page, args } = current();
  const loggedIn = !!api.session();
  if (!loggedIn && page !== "login") {
    location.replace("#/login");
    return;
  }
  if (loggedIn && page === "login") {
    location.replace("#/apps");
    return;
  }
  const module = PAGES[page];
  const main = document.getElementById("main");
  chrome(loggedIn, page);
  if (!module) {
    clear(main, el("h1", {}, "Not found"), el("p", {}, "No page ", el("code", {}, page), ". "), el("a", { href: "#/apps" }, "Applications"));
    return;
  }
  clear(main);
  document.title = `Oakestra – ${module.title}`;
  leave = (await module.render(main, args)) || null;
}

window.addEventListener("hashchange", route);
window.addEventListener("oak-logout", () => {
  if (current().page !== "login") location.hash = "#/login";
  else route();
});
document.getElementById("logout").addEventListener("click", () => api.logout());
route();
