// Calls to the admin API. Every state-changing call carries X-Fazt-Request,
// which the server requires of cookie calls (a cross-site form cannot set it).

export class ApiError extends Error {
  constructor(status, code, message, retryAfter) {
    super(message);
    this.status = status;
    this.code = code;
    this.retryAfter = retryAfter;
  }
}

let onUnauthorized = () => {};

export function whenSignedOut(handler) {
  onUnauthorized = handler;
}

export async function api(method, path, body, { raw = false } = {}) {
  const headers = { Accept: "application/json" };
  if (method !== "GET") headers["X-Fazt-Request"] = "1";
  let payload;
  if (body instanceof Blob) {
    payload = body;
    headers["Content-Type"] = body.type || "application/octet-stream";
  } else if (body !== undefined) {
    payload = JSON.stringify(body);
    headers["Content-Type"] = "application/json";
  }
  const response = await fetch(path, { method, headers, body: payload, credentials: "same-origin" });
  if (!response.ok) {
    let code = "http_" + response.status;
    let message = response.statusText || "Request failed";
    try {
      const data = await response.json();
      code = data.error.code;
      message = data.error.message;
    } catch (_) { /* not our JSON: keep the status line */ }
    if (response.status === 401 && path !== "/api/login") onUnauthorized();
    throw new ApiError(response.status, code, message, response.headers.get("Retry-After"));
  }
  return raw ? response : response.json();
}
