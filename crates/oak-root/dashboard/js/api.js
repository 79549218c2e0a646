// The one module that talks to the root's public REST API. Every call carries the user's
// access token; an answer 401 for an expired token is retried once after
// POST /api/auth/refresh with the refresh token.

const KEY = "oakestra.session";

/** An error answer of the API: {code, message, field?, errors?} plus the HTTP status. */
export class ApiError extends Error {
  constructor(status, body, retryAfter) {
    super((body && body.message) || `HTTP ${status}`);
    this.status = status;
    this.field = body && body.field;
    this.errors = (body && Array.isArray(body.errors)) ? body.errors : [];
    this.retryAfter = retryAfter;
  }
}

export function session() {
  try {
    return JSON.parse(sessionStorage.getItem(KEY) || "null");
  } catch {
    return null;
  }
}

function save(s) {
  if (s) sessionStorage.setItem(KEY, JSON.stringify(s));
  else sessionStorage.removeItem(KEY);
}

/** The claims of a token, for display only (the API decides what the user may do). */
function claims(token) {
  try {
    const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    return JSON.parse(atob(part));
  } catch {
    return {};
  }
}

export function roles() {
  const s = session();
  return s ? (claims(s.token).roles || []) : [];
}

export function isAdmin() {
  return roles().includes("Admin");
}

async function errorOf(resp) {
  let body = null;
  const text = await resp.text();
  try {
    body = JSON.parse(text);
  } catch {
    body = { message: text.trim() || `${resp.status} ${resp.statusText}` };
  }
  const retry = resp.headers.get("Retry-After");
  return new ApiError(resp.status, body, retry ? Number(retry) : undefined);
}

export async function login(username, password, organization) {
  const body = { username, password };
  if (organization) body.organization_name = organization;
  const resp = await fetch("/api/auth/login", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body),
  });
  if (!resp.ok) throw await errorOf(resp);
  const tokens = await resp.json();
  save({ user: username, organization: organization || "", token: tokens.token, refresh: tokens.refresh_token });
}

export function logout() {
  save(null);
  window.dispatchEvent(new Event("oak-logout"));
}

let refreshing = null;

async function refresh() {
  const s = session();
  if (!s || !s.refresh) return false;
  if (!refreshing) {
    refreshing = (async () => {
      const resp = await fetch("/api/auth/refresh", {
        method: "POST",
        headers: { Authorization: `Bearer ${s.refresh}` },
      });
      if (!resp.ok) return false;
      const body = await resp.json();
      save({ ...s, token: body.token });
      return true;
    })().finally(() => { refreshing = null; });
  }
  return refreshing;
}

/** fetch with the token; one retry after a refresh when the access token expired. */
async function authorized(path, init = {}) {
  for (let attempt = 0; ; attempt++) {
    const s = session();
    if (!s) {
      logout();
      throw new ApiError(401, { message: "not logged in" });
    }
    const headers = { ...(init.headers || {}), Authorization: `Bearer ${s.token}` };
    const resp = await fetch(path, { ...init, headers });
    if (resp.status !== 401) return resp;
    const err = await errorOf(resp);
    if (attempt === 0 && /expired/i.test(err.message) && await refresh()) continue;
    if (/token|not logged in/i.test(err.message)) logout();
    throw err;
  }
}

/** A JSON call: the decoded answer, or an ApiError. */
export async function call(method, path, body) {
  const init = { method };
  if (body !== undefined) {
    init.headers = { "Content-Type": "application/json" };
    init.body = typeof body === "string" ? body : JSON.stringify(body);
  }
  const resp = await authorized(path, init);
  if (!resp.ok) throw await errorOf(resp);
  const text = await resp.text();
  return text ? JSON.parse(text) : null;
}

export const get = (path) => call("GET", path);

/**
 * Follows an instance's output: calls onText with each piece until the signal aborts or the
 * stream ends.
 */
export async function followLogs(serviceId, instance, onText, signal) {
  const path = `/api/service/${encodeURIComponent(serviceId)}/instance/${encodeURIComponent(instance)}/logs?tail=100&follow=true`;
  const resp = await authorized(path, { signal });
  if (!resp.ok) throw await errorOf(resp);
  const reader = resp.body.getReader();
  const decoder = new TextDecoder();
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    onText(decoder.decode(value, { stream: true }));
  }
}

export const enc = encodeURIComponent;
