// The HTTP API with the credentials the user gave. X-Requested-With makes the server leave
// the basic challenge off a 401, so the browser shows our login form, not its own dialog.

const STORAGE_KEY = 'sluice.credentials';

export class ApiError extends Error {
  constructor(status, kind, reason) {
    super(`${status} ${kind}: ${reason}`);
    this.status = status;
    this.kind = kind;
    this.reason = reason;
  }
}

let credentials = JSON.parse(sessionStorage.getItem(STORAGE_KEY) || 'null');
let onUnauthorized = () => {};

export function setUnauthorizedHandler(handler) { onUnauthorized = handler; }
export function currentUser() { return credentials && credentials.user; }

export function login(user, password) {
  credentials = { user, password };
  sessionStorage.setItem(STORAGE_KEY, JSON.stringify(credentials));
}

/** Logs in if the API takes these credentials; throws (and stays logged out) if not. */
export async function tryLogin(user, password) {
  login(user, password);
  try {
    await request('GET', '/api/overview', undefined, { quiet: true });
  } catch (error) {
    logout();
    throw error;
  }
}

export function logout() {
  credentials = null;
  sessionStorage.removeItem(STORAGE_KEY);
}

function authorization() {
  // btoa takes Latin-1 only: encode the UTF-8 bytes of the pair first.
  const bytes = new TextEncoder().encode(`${credentials.user}:${credentials.password}`);
  return `Basic ${btoa(String.fromCharCode(...bytes))}`;
}

export async function request(method, path, body, { quiet = false } = {}) {
  if (!credentials) throw new ApiError(401, 'unauthorized', 'not logged in');
  const headers = { Authorization: authorization(), 'X-Requested-With': 'sluice-ui' };
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  const response = await fetch(path, {
    method, headers, body: body === undefined ? undefined : JSON.stringify(body),
    credentials: 'omit', cache: 'no-store',
  });
  const text = await response.text();
  let json = null;
  try { json = text ? JSON.parse(text) : null; } catch { json = null; }
  if (!response.ok) {
    const error = new ApiError(response.status, json?.error || 'error', json?.reason || text || response.statusText);
    if (response.status === 401 && !quiet) onUnauthorized(error);
    throw error;
  }
  return json;
}

export const get = (path) => request('GET', path);
export const post = (path, body) => request('POST', path, body === undefined ? {} : body);
export const del = (path) => request('DELETE', path);

/** A path segment: names may hold any character. */
export const seg = (value) => encodeURIComponent(value);

export function query(params) {
  const search = new URLSearchParams();
  for (const [key, value] of Object.entries(params)) {
    if (value !== undefined && value !== null && value !== '') search.set(key, String(value));
  }
  const text = search.toString();
  return text ? `?${text}` : '';
}
