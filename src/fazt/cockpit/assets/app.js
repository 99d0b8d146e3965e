// The fazt cockpit: hash routes (#/status, #/sites, #/https, #/tokens, #/settings,
// #/sites/NAME/logs), one status poll every 2 s while signed in.
import { api, whenSignedOut } from "./api.js";
import { drawLineChart } from "./chart.js";

const POLL_MS = 2000;
const CHART_POINTS = 60;
const LEDGER_LABELS = {
  baseline: "Python baseline", pinned: "Pinned admin assets", vfs_cache: "File cache (VFS)",
  sqlite: "SQLite page caches", js: "JavaScript slots", threads: "Worker threads",
  buffers: "Connection buffers", replica: "Litestream (replication)",
};

const $ = (id) => document.getElementById(id);
const state = { signedIn: false, timer: null, rates: [], refreshes: 0, config: null, pending: null };

// -- formatting --------------------------------------------------------------

function bytes(n) {
  if (n == null || Number.isNaN(n)) return "–";
  const units = ["B", "KB", "MB", "GB", "TB"];
  let i = 0;
  let v = Number(n);
  while (v >= 1024 && i < units.length - 1) { v /= 1024; i += 1; }
  return `${v >= 100 || i === 0 ? Math.round(v) : v.toFixed(1)} ${units[i]}`;
}

function number(n, digits = 0) {
  return n == null ? "–" : Number(n).toLocaleString("en", { maximumFractionDigits: digits });
}

function duration(seconds) {
  const s = Math.floor(seconds);
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m ${s % 60}s`;
  if (s < 86400) return `${Math.floor(s / 3600)}h ${Math.floor((s % 3600) / 60)}m`;
  return `${Math.floor(s / 86400)}d ${Math.floor((s % 86400) / 3600)}h`;
}

function when(epoch) {
  return epoch ? new Date(epoch * 1000).toLocaleString() : "–";
}

function setBar(fill, used, total) {
  const ratio = total > 0 ? used / total : 0;
  fill.style.width = `${Math.min(100, ratio * 100).toFixed(1)}%`;
  fill.classList.toggle("hot", ratio >= 0.75 && ratio < 1);
  fill.classList.toggle("over", ratio >= 1);
}

function make(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (key === "dataset") Object.assign(node.dataset, value);
    else if (key in node) node[key] = value;
    else node.setAttribute(key, value);
  }
  node.append(...children);
  return node;
}

let noticeTimer = null;
function notice(message, isError = false) {
  const box = $("notice");
  box.textContent = message;
  box.classList.toggle("error", isError);
  box.hidden = false;
  clearTimeout(noticeTimer);
  noticeTimer = setTimeout(() => { box.hidden = true; }, isError ? 8000 : 4000);
}

// Where a site lives, from the cockpit's own address: admin.D:PORT -> NAME.D:PORT.
function siteUrl(name) {
  const domain = location.hostname.replace(/^admin\./, "");
  const host = name === "root" ? domain : `${name}.${domain}`;
  return `${location.protocol}//${host}${location.port ? ":" + location.port : ""}/`;
}

// -- routing -------------------------------------------------------------------

const VIEWS = ["login", "status", "sites", "logs", "versions", "env", "https", "tokens", "settings"];
const SITE_PAGES = { logs: loadLogs, versions: loadVersions, env: loadEnv };

function show(view) {
  for (const name of VIEWS) $(`view-${name}`).hidden = name !== view;
  $("topbar").hidden = view === "login";
  for (const link of document.querySelectorAll("[data-nav]")) {
    link.classList.toggle("active", link.dataset.nav === view || (Object.hasOwn(SITE_PAGES, view) && link.dataset.nav === "sites"));
  }
  document.body.dataset.view = view;
}

// A site name from the address bar; null when it is not valid percent-encoding
// (#/sites/%ZZ/logs threw "URI malformed" out of route()): the sites list instead.
function siteName(part) {
  try { return decodeURIComponent(part || ""); } catch { return null; }
}

async function route() {
  if (!state.signedIn) { show("login"); $("login-username").focus(); return; }
  const parts = location.hash.replace(/^#\/?/, "").split("/").filter(Boolean);
  const page = parts[0] || "status";
  const site = siteName(parts[1]);
  if (page === "sites" && site !== null && Object.hasOwn(SITE_PAGES, parts[2] || "")) {
    show(parts[2]);
    return SITE_PAGES[parts[2]](site);
  }
  const view = VIEWS.includes(page) && page !== "login" ? page : "status";
  show(view);
  if (view === "status") return refresh();
  if (view === "sites") return loadSites();
  if (view === "https") return loadHttps();
  if (view === "tokens") return loadTokens();
  if (view === "settings") return loadSettings();
}

function stopPolling() {
  state.signedIn = false;
  clearInterval(state.timer);
  state.timer = null;
}

function signedOut() {
  stopPolling();
  $("maintenance-banner").hidden = true;
  show("login");
}

function signedIn(username) {
  state.signedIn = true;
  $("who").textContent = username;
  if (!state.timer) state.timer = setInterval(refresh, POLL_MS);
  refresh();
}

async function guarded(action, button) {
  if (button) button.disabled = true;
  try {
    return await action();
  } catch (error) {
    if (error.status !== 401) notice(error.message, true);
    return undefined;
  } finally {
    if (button) button.disabled = false;
  }
}

// -- status --------------------------------------------------------------------

async function refresh() {
  if (!state.signedIn) return;
  let status;
  try {
    status = await api("GET", "/api/system/status");
  } catch (error) {
    if (error.status !== 401) $("status-updated").textContent = `no answer: ${error.message}`;
    return;
  }
  renderBanner(status);
  state.rates.push(status.requests ? status.requests.per_second : 0);
  if (state.rates.length > CHART_POINTS) state.rates.shift();
  if (document.body.dataset.view === "status") renderStatus(status);
}

function renderBanner(s) {
  const inMaintenance = s.mode === "maintenance";
  $("maintenance-banner").hidden = !inMaintenance;
  if (inMaintenance) {
    $("maintenance-ratio").textContent = number(s.db.ratio, 1);
    $("maintenance-limit").textContent = number(s.db.maintenance_ratio ?? s.thresholds.maintenance_ratio);
  }
}

function renderStatus(s) {
  state.refreshes += 1;
  const updated = $("status-updated");
  updated.dataset.refreshes = String(state.refreshes);
  updated.textContent = `updated ${new Date().toLocaleTimeString()} · every ${POLL_MS / 1000} s`;

  const mode = $("status-mode");
  mode.textContent = s.mode;
  mode.className = `big mode-${s.mode}`;
  $("status-version").textContent = `fazt ${s.version || ""}`;
  $("status-uptime").textContent = duration(s.uptime_s || 0);
  if (s.machine) {
    $("status-machine").textContent =
      `${number(s.machine.ram_mb)} MB RAM · ${number(s.machine.cpus, 2)} CPU`;
  }

  $("status-rps").textContent = number(s.requests.per_second, 1);
  $("status-requests-total").textContent = number(s.requests.total);
  drawLineChart($("status-chart"), state.rates, CHART_POINTS);

  const mem = s.memory;
  $("status-rss").textContent = bytes(mem.rss_bytes);
  $("status-budget").textContent = bytes(mem.budget_bytes);
  setBar($("status-rss-fill"), mem.rss_bytes, mem.budget_bytes);
  renderLedger(mem.ledger || {});

  const c = s.cache;
  $("status-cache").textContent = bytes(c.bytes);
  $("status-cache-limit").textContent = bytes(c.limit_bytes);
  setBar($("status-cache-fill"), c.bytes, c.limit_bytes);
  const lookups = c.hits + c.misses;
  $("status-hit-rate").textContent = lookups ? `${((100 * c.hits) / lookups).toFixed(1)}% of ${number(lookups)}` : "no lookups yet";
  $("status-pinned").textContent = bytes(c.pinned_bytes);

  const js = s.js;
  $("status-js").textContent = `${number(js.in_use)} / ${number(js.slots)}`;
  setBar($("status-js-fill"), js.in_use, js.slots);
  $("status-js-rejected").textContent = number(js.rejected);

  $("status-db-size").textContent = bytes(s.db.size_bytes);
  $("status-db-ratio").textContent = `${number(s.db.ratio, 4)}×`;
  $("status-db-limit").textContent = `${number(s.db.maintenance_ratio ?? s.thresholds.maintenance_ratio)}×`;

  renderReplica(s.replica || { url: null });

  const https = s.https || { enabled: false, certificates: [] };
  const failing = https.certificates.filter((c) => c.last_error);
  // An import left to lapse has no error, yet browsers refuse it: counted apart, named.
  const expired = https.certificates.filter((c) => !c.last_error && isExpired(c));
  const valid = https.certificates.length - failing.length - expired.length;
  $("status-https").textContent = https.enabled
    ? `${valid} valid · ${failing.length} failing${expired.length ? ` · ${expired.length} expired` : ""}`
    : "off";
  $("status-https-errors").replaceChildren(
    ...failing.map((c) => make("li", {}, make("code", {}, c.host), ` ${c.last_error}`)),
    ...expired.map((c) => make("li", {}, make("code", {}, c.host), ` expired on ${when(c.not_after)}`)));

  const overrides = s.overrides || [];
  $("card-overrides").hidden = overrides.length === 0;
  renderOverrides($("status-overrides"), overrides);
}

// Replication (Litestream): where to, how far behind, its process; a warning when behind.
function renderReplica(r) {
  const card = $("card-replica");
  card.classList.toggle("warning", Boolean(r.warning));
  $("status-replica").textContent = !r.url ? "off"
    : r.role === "follower" ? "read-only follower" : "on";
  $("status-replica").title = r.url || "fazt replica set URL turns it on";
  const synced = r.role === "follower" ? r.last_applied_at : r.last_sync_at;
  $("status-replica-sync").textContent = !r.url ? "–"
    : r.lag_s != null ? `${number(r.lag_s, 1)} s ago` : synced ? when(synced) : "not yet";
  $("status-replica-process").textContent = !r.url ? "not running"
    : r.running ? `pid ${r.pid} · ${bytes(r.rss_bytes)}${r.restarts ? ` · ${r.restarts} restarts` : ""}`
      : "not running";
  // An old error says when it was, and that replication worked since: not a current one.
  const success = r.role === "follower" ? "an update" : "a sync";
  $("status-replica-error").textContent = !r.last_error ? "–"
    : `${when(r.last_error_at)}${r.last_error_past ? ` (past: ${success} has succeeded since)` : ""}: ${r.last_error}`;
  $("status-replica-error").classList.toggle("error", Boolean(r.last_error && !r.last_error_past));
  $("status-replica-warning").hidden = !r.warning;
  $("status-replica-warning").textContent = r.warning || "";
}

function renderLedger(ledger) {
  const keys = Object.keys(LEDGER_LABELS).filter((k) => k in ledger);
  const usable = ledger.usable_mb || 1;
  const stack = $("status-ledger-bar");
  stack.replaceChildren(...keys.map((k, i) => {
    const part = make("span", { className: `c${i}`, title: `${LEDGER_LABELS[k]}: ${number(ledger[k], 2)} MB` });
    part.style.width = `${Math.min(100, (100 * ledger[k]) / usable)}%`;
    return part;
  }));
  const rows = keys.map((k, i) => make("tr", { dataset: { item: k } },
    make("td", {}, make("span", { className: `swatch c${i}` }), LEDGER_LABELS[k]),
    make("td", { className: "num" }, `${number(ledger[k], 2)} MB`)));
  rows.push(make("tr", { className: "total" },
    make("td", {}, "Allowed by the thresholds"),
    make("td", { className: "num" }, `${number(ledger.total_mb, 1)} of ${number(ledger.usable_mb, 1)} MB`)));
  $("status-ledger").tBodies[0].replaceChildren(...rows);
}

function renderOverrides(list, overrides) {
  list.replaceChildren(...overrides.map((o) => make("li", { dataset: { key: o.key } },
    make("code", {}, o.key), ` ${JSON.stringify(o.old)} → ${JSON.stringify(o.new)} on ${when(o.at)}. `,
    make("span", { className: "muted" }, o.message || ""))));
}

// -- sites ---------------------------------------------------------------------

async function loadSites() {
  const data = await guarded(() => api("GET", "/api/sites"));
  if (!data) return;
  $("sites-empty").hidden = data.sites.length > 0;
  $("sites-table").hidden = data.sites.length === 0;
  $("sites-body").replaceChildren(...data.sites.map((site) => {
    const remove = make("button", { type: "button", className: "small danger", textContent: "Delete", dataset: { action: "delete", site: site.name } });
    remove.addEventListener("click", () => deleteSite(site.name, remove));
    return make("tr", { dataset: { site: site.name } },
      make("td", {}, make("a", { className: "site-name", href: siteUrl(site.name), target: "_blank", rel: "noopener" }, site.name)),
      make("td", { className: "num" }, number(site.files)),
      make("td", { className: "num" }, bytes(site.bytes)),
      make("td", {}, when(site.updated_at)),
      make("td", { className: "actions-cell" },
        ...["logs", "versions", "env"].map((page) => make("a", {
          href: `#/sites/${encodeURIComponent(site.name)}/${page}`, dataset: { action: page, site: site.name },
        }, { logs: "Logs", versions: `Versions (v${site.version})`, env: "Secrets" }[page])),
        remove));
  }));
}

async function deleteSite(name, button) {
  if (!window.confirm(`Delete the site "${name}" with all its files and data? This cannot be undone.`)) return;
  const done = await guarded(() => api("DELETE", `/api/sites/${encodeURIComponent(name)}`), button);
  if (done) { notice(`Site ${name} deleted.`); loadSites(); }
}

async function deploy(event) {
  event.preventDefault();
  const name = $("deploy-site").value.trim();
  const file = $("deploy-file").files[0];
  if (!file) return;
  const zip = new Blob([file], { type: "application/zip" });
  const result = await guarded(() => api("POST", `/api/deploy?site=${encodeURIComponent(name)}`, zip), $("deploy-submit"));
  if (result) {
    notice(`Deployed ${result.files} files (${bytes(result.bytes)}) as ${result.site}.`);
    $("deploy-form").reset();
    loadSites();
  }
}

async function loadLogs(name) {
  $("logs-site").textContent = name;
  $("logs-refresh").dataset.site = name;
  const data = await guarded(() => api("GET", `/api/sites/${encodeURIComponent(name)}/logs`));
  if (!data) return;
  const box = $("logs-lines");
  if (!data.lines.length) { box.textContent = "No log lines yet: console.log in api/main.js writes here."; return; }
  box.replaceChildren(...data.lines.map((line) => {
    const entry = typeof line === "object" && line !== null ? line : { message: String(line) };
    const at = entry.time ?? entry.at ?? entry.ts;
    const level = entry.level || "log";
    const text = entry.message ?? entry.text ?? entry.line ?? JSON.stringify(entry);
    const stamp = typeof at === "number" ? new Date(at * (at < 1e12 ? 1000 : 1)).toLocaleTimeString() : (at || "");
    return make("div", { className: level }, `${stamp} ${level.padEnd(5)} ${text}`);
  }));
}

// -- versions and secrets of a site ------------------------------------------------

async function loadVersions(name) {
  $("versions-site").textContent = name;
  const data = await guarded(() => api("GET", `/api/sites/${encodeURIComponent(name)}/versions`));
  if (!data) return;
  $("versions-body").replaceChildren(...data.versions.map((v) => {
    const cell = make("td", { className: "actions-cell" });
    if (v.live) {
      cell.append(make("span", { className: "badge" }, "live"));
    } else {
      if (v.previous) cell.append(make("span", { className: "badge" }, "previous"), " ");
      const back = make("button", { type: "button", className: "small", textContent: "Roll back to this", dataset: { action: "rollback", version: v.version } });
      back.addEventListener("click", () => rollback(name, v.version, back));
      cell.append(back);
    }
    return make("tr", { dataset: { version: v.version, live: String(v.live), previous: String(v.previous) } },
      make("td", {}, `v${v.version}`), make("td", {}, when(v.created_at)), make("td", {}, when(v.live_at)),
      make("td", { className: "num" }, number(v.files)), make("td", { className: "num" }, bytes(v.bytes)), cell);
  }));
}

async function rollback(name, version, button) {
  if (!window.confirm(`Serve version ${version} of "${name}" again, from the next request?`)) return;
  const done = await guarded(() => api("POST", `/api/sites/${encodeURIComponent(name)}/rollback`, { version }), button);
  if (done) { notice(`${name} serves version ${done.version} again (was ${done.from}).`); loadVersions(name); }
}

async function loadEnv(name) {
  $("env-site").textContent = name;
  $("env-form").dataset.site = name;
  const data = await guarded(() => api("GET", `/api/sites/${encodeURIComponent(name)}/env`));
  if (!data) return;
  $("env-empty").hidden = data.env.length > 0;
  $("env-table").hidden = data.env.length === 0;
  $("env-body").replaceChildren(...data.env.map((entry) => {
    const remove = make("button", { type: "button", className: "small danger", textContent: "Remove", dataset: { action: "unset", key: entry.key } });
    remove.addEventListener("click", async () => {
      if (!window.confirm(`Remove ${entry.key}? The handler reads undefined from its next request.`)) return;
      const path = `/api/sites/${encodeURIComponent(name)}/env/${encodeURIComponent(entry.key)}`;
      if (await guarded(() => api("DELETE", path), remove)) { notice(`${entry.key} removed.`); loadEnv(name); }
    });
    return make("tr", { dataset: { key: entry.key } }, make("td", {}, make("code", {}, entry.key)),
      make("td", {}, when(entry.updated_at)), make("td", { className: "actions-cell" }, remove));
  }));
}

async function setEnv(event) {
  event.preventDefault();
  const name = $("env-form").dataset.site;
  const key = $("env-key").value.trim();
  const path = `/api/sites/${encodeURIComponent(name)}/env/${encodeURIComponent(key)}`;
  const done = await guarded(() => api("PUT", path, { value: $("env-value").value }), $("env-save"));
  if (done) { notice(`${key} saved; the handler reads it from its next request.`); $("env-form").reset(); loadEnv(name); }
}

// -- https ---------------------------------------------------------------------

function isExpired(c) {
  return Boolean(c.not_after) && c.not_after * 1000 <= Date.now();
}

async function loadHttps() {
  const [certs, domains] = await Promise.all([
    guarded(() => api("GET", "/api/certificates")),
    guarded(() => api("GET", "/api/domains")),
  ]);
  if (!certs || !domains) return;
  $("https-state").textContent = certs.enabled
    ? `on, port ${certs.port ?? "–"}${certs.ordering ? ` · ordering ${certs.ordering}…` : ""}`
    : "off (Settings → https)";
  $("certs-empty").hidden = certs.certificates.length > 0;
  $("certs-table").hidden = certs.certificates.length === 0;
  $("certs-body").replaceChildren(...certs.certificates.map((c) => make("tr", { dataset: { host: c.host } },
    make("td", {}, c.host), make("td", {}, c.issuer || "–"),
    make("td", { className: isExpired(c) ? "error" : "" },
      c.not_after ? `${isExpired(c) ? "expired " : ""}${when(c.not_after)}` : "none yet"),
    make("td", {}, c.source || "–"),
    make("td", { className: c.last_error ? "error" : "muted" },
      c.last_error ? `${c.last_error} (next try ${when(c.next_attempt)})` : "–"))));
  $("domains-table").hidden = domains.domains.length === 0;
  $("domains-body").replaceChildren(...domains.domains.map((d) => {
    const remove = make("button", { type: "button", className: "small", textContent: "Remove" });
    remove.addEventListener("click", async () => {
      const path = `/api/sites/${encodeURIComponent(d.site)}/domains/${encodeURIComponent(d.host)}`;
      if (await guarded(() => api("DELETE", path), remove)) { notice(`${d.host} removed.`); loadHttps(); }
    });
    return make("tr", { dataset: { host: d.host } }, make("td", {}, d.host), make("td", {}, d.site),
      make("td", { className: "actions-cell" }, remove));
  }));
}

async function addDomain(event) {
  event.preventDefault();
  const site = $("domain-site").value.trim();
  const result = await guarded(() => api("POST", `/api/sites/${encodeURIComponent(site)}/domains`,
    { host: $("domain-host").value.trim() }), $("domain-add"));
  if (result) { notice(`${result.host} now serves ${result.site}.`); $("domain-form").reset(); loadHttps(); }
}

async function importCertificate(event) {
  event.preventDefault();
  const [cert, key] = await Promise.all([$("import-cert").files[0].text(), $("import-key").files[0].text()]);
  const result = await guarded(() => api("POST", "/api/certificates",
    { host: $("import-host").value.trim(), cert, key }), $("import-submit"));
  if (result) { notice(`Certificate for ${result.host} installed.`); $("import-form").reset(); loadHttps(); }
}

// -- tokens --------------------------------------------------------------------

async function loadTokens() {
  const data = await guarded(() => api("GET", "/api/tokens"));
  if (!data) return;
  $("tokens-empty").hidden = data.tokens.length > 0;
  $("tokens-table").hidden = data.tokens.length === 0;
  $("tokens-body").replaceChildren(...data.tokens.map((t) => {
    const revoke = make("button", { type: "button", className: "small", textContent: "Revoke", dataset: { action: "revoke", token: t.id } });
    revoke.addEventListener("click", async () => {
      if (!window.confirm(`Revoke the token "${t.name}"? Scripts using it will stop working.`)) return;
      if (await guarded(() => api("DELETE", `/api/tokens/${t.id}`), revoke)) { notice("Token revoked."); loadTokens(); }
    });
    return make("tr", { dataset: { token: t.id } }, make("td", {}, t.name), make("td", {}, when(t.created_at)),
      make("td", { className: "actions-cell" }, revoke));
  }));
}

async function createToken(event) {
  event.preventDefault();
  const result = await guarded(() => api("POST", "/api/tokens", { name: $("token-name").value }), $("token-create"));
  if (!result) return;
  $("token-value").textContent = result.token;
  $("token-new").hidden = false;
  $("token-name").value = "";
  loadTokens();
}

// Over plain HTTP (admin.D before HTTPS is on) the page is not a secure context and
// navigator.clipboard is undefined: the button threw and did nothing. The token is
// selected instead, for Ctrl+C.
function copyToken() {
  const value = $("token-value");
  const byHand = () => {
    window.getSelection().selectAllChildren(value);
    notice("Selected: copy it with Ctrl+C (or ⌘C).", true);
  };
  if (!navigator.clipboard) { byHand(); return; }
  navigator.clipboard.writeText(value.textContent).then(() => notice("Copied."), byHand);
}

// -- settings ------------------------------------------------------------------

async function loadSettings() {
  const config = await guarded(() => api("GET", "/api/config"));
  if (config) renderSettings(config);
}

function renderSettings(config) {
  state.config = config;
  $("break-glass").hidden = true;
  $("settings-state").textContent = "";
  const owned = new Set(config.owner_keys);
  const overridden = new Set(config.overrides.map((o) => o.key));
  $("settings-fields").replaceChildren(...config.schema.map((entry) => {
    const value = config.values[entry.key];
    const [low, high] = config.safe[entry.key] || [entry.min, entry.max];
    const input = make("input", {
      type: "number", name: entry.key, id: `setting-${entry.key}`, value: String(value),
      step: entry.integer ? "1" : "any", min: String(entry.min), max: String(entry.max), required: true,
    });
    const card = make("div", { className: "card setting", dataset: { key: entry.key } });
    const check = () => {
      const v = Number(input.value);
      card.classList.toggle("changed", input.value !== String(value));
      card.classList.toggle("unsafe", input.value !== "" && (v < low || v > high));
    };
    input.addEventListener("input", check);
    const badges = [];
    if (overridden.has(entry.key)) badges.push(make("span", { className: "badge glass" }, "break glass"));
    else if (owned.has(entry.key)) badges.push(make("span", { className: "badge" }, "set by you"));
    if (owned.has(entry.key) || overridden.has(entry.key)) {
      const reset = make("button", { type: "button", className: "small", textContent: "Reset to recommended", dataset: { action: "reset", key: entry.key } });
      reset.addEventListener("click", () => resetSettings([entry.key], reset));
      badges.push(reset);
    }
    card.append(
      make("div", { className: "head" }, make("label", { htmlFor: input.id, className: "name" }, entry.label), ...badges),
      make("span", { className: "key" }, entry.key),
      make("div", { className: "value" }, input, make("span", { className: "unit" }, entry.unit)),
      make("p", { className: "safe", dataset: { low, high } }, `Safe: ${number(low, 2)} – ${number(high, 2)} ${entry.unit}`),
      make("p", { className: "desc" }, entry.description));
    check();
    return card;
  }));
  $("settings-other").replaceChildren(...config.settings.map((entry) => settingCard(entry, config.values[entry.key])));
  const hasOverrides = config.overrides.length > 0;
  $("settings-no-overrides").hidden = hasOverrides;
  renderOverrides($("settings-overrides"), config.overrides);
}

// A setting that is not a threshold (fazt/settings.py): an input for its type, no safe range.
function settingInput(entry, value) {
  const id = `setting-${entry.key}`;
  if (entry.type === "choice") {
    const select = make("select", { name: entry.key, id }, ...entry.choices.map((c) => make("option", { value: c }, c)));
    select.value = value;
    return select;
  }
  if (entry.type === "bool") return make("input", { type: "checkbox", name: entry.key, id, checked: Boolean(value) });
  if (entry.type === "int") {
    const props = { type: "number", name: entry.key, id, step: "1", value: String(value), required: true };
    if (entry.min != null) props.min = String(entry.min);
    if (entry.max != null) props.max = String(entry.max);
    return make("input", props);
  }
  const text = entry.type === "list" ? value.join(", ") : value;
  return make("input", { type: "text", name: entry.key, id, value: text, placeholder: entry.type === "list" ? "comma-separated" : "" });
}

function settingValue(entry, input) {
  if (entry.type === "bool") return input.checked;
  if (entry.type === "int") return Number(input.value);
  if (entry.type === "list") return input.value.split(",").map((s) => s.trim()).filter(Boolean);
  return input.value.trim();
}

function settingCard(entry, value) {
  const input = settingInput(entry, value);
  const card = make("div", { className: "card setting", dataset: { key: entry.key } });
  input.addEventListener("input", () => {
    card.classList.toggle("changed", JSON.stringify(settingValue(entry, input)) !== JSON.stringify(value));
  });
  card.append(
    make("div", { className: "head" }, make("label", { htmlFor: input.id, className: "name" }, entry.label)),
    make("span", { className: "key" }, entry.key),
    make("div", { className: "value" }, input),
    make("p", { className: "desc" }, entry.description));
  return card;
}

function changedValues() {
  const changes = {};
  for (const entry of state.config.schema) {
    const input = $(`setting-${entry.key}`);
    if (input.value !== String(state.config.values[entry.key])) changes[entry.key] = Number(input.value);
  }
  for (const entry of state.config.settings) {
    const value = settingValue(entry, $(`setting-${entry.key}`));
    if (JSON.stringify(value) !== JSON.stringify(state.config.values[entry.key])) changes[entry.key] = value;
  }
  return changes;
}

async function saveSettings(breakGlass) {
  const changes = breakGlass ? state.pending : changedValues();
  if (!changes || Object.keys(changes).length === 0) { $("settings-state").textContent = "Nothing changed."; return; }
  try {
    $("settings-save").disabled = true;
    const config = await api("PUT", "/api/config", { ...changes, break_glass: breakGlass });
    state.pending = null;
    renderSettings(config);
    notice(breakGlass ? "Applied with break glass; the override is recorded." : "Settings saved.");
  } catch (error) {
    if (error.status === 409) {
      state.pending = changes;
      $("break-glass-message").textContent = error.message;
      $("break-glass").hidden = false;
      $("break-glass").scrollIntoView({ block: "nearest" });
    } else if (error.status !== 401) {
      notice(error.message, true);
    }
  } finally {
    $("settings-save").disabled = false;
  }
}

async function resetSettings(keys, button) {
  if (!keys && !window.confirm("Put every limit back to what fazt computes for this machine? Your own values and break-glass overrides go.")) return;
  const config = await guarded(() => api("POST", "/api/config/reset", keys ? { keys } : { all: true }), button);
  if (config) { renderSettings(config); notice(keys ? `${keys[0]} is back to the recommended value.` : "Every limit is back to the recommended value."); }
}

async function recalibrate(button) {
  if (!window.confirm("Re-probe this machine and recompute every limit you have not set yourself? Open connections carry on.")) return;
  const status = await guarded(() => api("POST", "/api/system/recalibrate"), button);
  if (!status) return;
  notice(`Recalibrated: ${number(status.machine.ram_mb)} MB RAM, ${number(status.machine.cpus, 2)} CPU; mode ${status.mode}.`);
  renderBanner(status);
  if (document.body.dataset.view === "settings") loadSettings();
}

// -- sign in and out -------------------------------------------------------------

async function login(event) {
  event.preventDefault();
  const error = $("login-error");
  error.hidden = true;
  const body = { username: $("login-username").value, password: $("login-password").value };
  try {
    $("login-submit").disabled = true;
    const session = await api("POST", "/api/login", body);
    $("login-password").value = "";
    // This browser is the owner's from now on: its sign-ins pass the server-wide
    // ceiling on failed guesses. Best effort: the session works without it.
    api("POST", "/api/device").catch(() => {});
    signedIn(session.username);
    if (!location.hash || location.hash === "#/login") location.hash = "#/status";
    else route();
  } catch (e) {
    error.textContent = e.status === 429 ? `${e.message}` : e.message;
    error.hidden = false;
  } finally {
    $("login-submit").disabled = false;
  }
}

async function logout(everywhere) {
  if (everywhere && !window.confirm("Sign out every browser and device, this one included?")) return;
  // No status poll from here on: one sent while the sign-out is on its way could reach
  // the server after it and come back 401.
  stopPolling();
  await guarded(() => api("POST", everywhere ? "/api/logout-all" : "/api/logout"));
  signedOut();
}

async function start() {
  whenSignedOut(signedOut);
  $("login-form").addEventListener("submit", login);
  $("logout").addEventListener("click", () => logout(false));
  $("logout-all").addEventListener("click", () => logout(true));
  $("deploy-form").addEventListener("submit", deploy);
  $("token-form").addEventListener("submit", createToken);
  $("domain-form").addEventListener("submit", addDomain);
  $("import-form").addEventListener("submit", importCertificate);
  $("token-copy").addEventListener("click", copyToken);
  $("logs-refresh").addEventListener("click", () => loadLogs($("logs-refresh").dataset.site));
  $("env-form").addEventListener("submit", setEnv);
  $("settings-reset-all").addEventListener("click", (event) => resetSettings(null, event.currentTarget));
  $("settings-form").addEventListener("submit", (event) => { event.preventDefault(); saveSettings(false); });
  $("break-glass-confirm").addEventListener("click", () => saveSettings(true));
  $("break-glass-cancel").addEventListener("click", () => { state.pending = null; loadSettings(); });
  $("recalibrate").addEventListener("click", (event) => recalibrate(event.currentTarget));
  $("maintenance-recalibrate").addEventListener("click", (event) => recalibrate(event.currentTarget));
  window.addEventListener("hashchange", route);
  try {
    const session = await api("GET", "/api/session");
    signedIn(session.username);
  } catch (_) {
    state.signedIn = false;
  }
  route();
}

start();
