// Geohost's Geo admin page: GitLab's Admin > Geo > Sites and Replication
// details. Plain ES module, no build step. It reads only the public admin
// APIs (/api/v4/geo_sites/status, /api/v4/geo_sites, /api/graphql) with the
// admin token, kept in sessionStorage, in the PRIVATE-TOKEN header.

const TOKEN_KEY = "geohost.adminToken";
const REFRESH_MS = 5000;
const PAGE_SIZE = 50;
// The largest count GitLab's registries connection gives (`count(limit:)`).
const COUNT_LIMIT = 1000;

const $ = (id) => document.getElementById(id);

// ---------------------------------------------------------------- API

class Unauthorized extends Error {}

function token() {
  return sessionStorage.getItem(TOKEN_KEY);
}

async function api(path, options = {}) {
  const response = await fetch(path, {
    ...options,
    headers: { ...(options.headers || {}), "PRIVATE-TOKEN": token() || "" },
    cache: "no-store",
  });
  if (response.status === 401) throw new Unauthorized();
  let body = null;
  try {
    body = await response.json();
  } catch (_) {
    // Not JSON: reported below with the status.
  }
  if (!response.ok) {
    const message = body && body.message ? body.message : response.statusText;
    throw new Error(`${path} answered ${response.status}: ${message}`);
  }
  return body;
}

async function graphql(query, variables = {}) {
  const answer = await api("/api/graphql", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ query, variables }),
  });
  if (answer.errors && answer.errors.length) {
    throw new Error(answer.errors.map((e) => e.message).join("; "));
  }
  return answer.data;
}

// ---------------------------------------------------------------- helpers

/** Builds an element: el("td", {class: "num"}, "text", child…). */
function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "class") node.className = value;
    else if (name === "text") node.textContent = value;
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

const numberFormat = new Intl.NumberFormat("en");
const fmt = (n) => (n === null || n === undefined ? "—" : numberFormat.format(n));

function percent(part, total) {
  if (!total) return "0.00%";
  return `${((part * 100) / total).toFixed(2)}%`;
}

function plural(n, one, many) {
  return `${fmt(n)} ${n === 1 ? one : many}`;
}

function ago(seconds) {
  if (seconds < 0) seconds = 0;
  if (seconds < 60) return `${Math.round(seconds)} s`;
  if (seconds < 3600) return `${Math.round(seconds / 60)} min`;
  if (seconds < 86400) return `${(seconds / 3600).toFixed(1)} h`;
  return `${(seconds / 86400).toFixed(1)} days`;
}

/** A <time> showing "3 min ago", the exact time in its title. */
function timeCell(iso) {
  if (!iso) return el("span", { class: "muted" }, "Never");
  const at = new Date(iso);
  const seconds = (Date.now() - at.getTime()) / 1000;
  const text = seconds >= 0 ? `${ago(seconds)} ago` : `in ${ago(-seconds)}`;
  return el("time", { datetime: iso, title: at.toLocaleString() }, text);
}

function say(text, bad = false) {
  const message = $("message");
  message.textContent = text;
  message.classList.toggle("bad", bad);
}

function titleCase(state) {
  return state ? state.charAt(0) + state.slice(1).toLowerCase() : "—";
}

const STATE_CLASS = {
  SYNCED: "ok",
  SUCCEEDED: "ok",
  FAILED: "bad",
  STARTED: "info",
  PENDING: "warn",
  DISABLED: "plain",
};

function stateBadge(state) {
  return el("span", { class: `badge ${STATE_CLASS[state] || "plain"}` }, titleCase(state));
}

/** A labelled bar: role=progressbar with aria values, and its text. */
function meter(kind, label, value, total) {
  if (value === null || value === undefined) {
    return el("td", { class: "meter muted" }, "Not applicable");
  }
  const text = `${fmt(value)} of ${fmt(total)} (${percent(value, total)})`;
  const width = total ? Math.min(100, (value * 100) / total) : 0;
  return el(
    "td",
    { class: "meter", "data-count": kind, "data-value": value, "data-total": total },
    el(
      "div",
      {
        class: `bar ${kind}`,
        role: "progressbar",
        "aria-label": label,
        "aria-valuemin": 0,
        "aria-valuemax": total,
        "aria-valuenow": value,
        "aria-valuetext": text,
      },
      el("span", { style: null, "data-width": width.toFixed(2) }),
    ),
    el("div", { class: "meter-text" }, text),
  );
}

/** Bars are sized from data-width (a CSP without 'unsafe-inline' forbids style attributes). */
function sizeBars(root) {
  for (const span of root.querySelectorAll("[data-width]")) {
    span.style.width = `${span.dataset.width}%`;
  }
}

// ---------------------------------------------------------------- login

function showOnly(id) {
  for (const section of ["login", "sites-view", "replication-view"]) {
    $(section).hidden = section !== id;
  }
  $("sign-out").hidden = id === "login";
}

function askForToken(reason) {
  stopPolling();
  showOnly("login");
  $("login-error").textContent = reason || "";
  $("token").value = "";
  $("token").focus();
}

async function signIn(event) {
  event.preventDefault();
  const value = $("token").value.trim();
  if (!value) {
    $("login-error").textContent = "Enter an admin token.";
    $("token").focus();
    return;
  }
  sessionStorage.setItem(TOKEN_KEY, value);
  $("login-error").textContent = "";
  await start();
}

function signOut() {
  sessionStorage.removeItem(TOKEN_KEY);
  say("Token forgotten.");
  askForToken("");
}

// ---------------------------------------------------------------- shared data

let types = null; // [{name, namePlural, title, titlePlural, graphqlFieldName, graphqlRegistryClass}]
let thisSite = null; // {name, url, primary}

async function loadBasics() {
  const data = await graphql(`{
    geoReplicableTypes { name namePlural title titlePlural graphqlFieldName graphqlRegistryClass }
    geoNode { name url primary }
  }`);
  types = data.geoReplicableTypes;
  thisSite = data.geoNode;
  $("site-name").textContent = thisSite
    ? `${thisSite.name} (${thisSite.primary ? "primary" : "secondary"})`
    : "";
  const nav = $("nav");
  nav.querySelectorAll("li.type").forEach((li) => li.remove());
  for (const type of types) {
    nav.append(
      el("li", { class: "type" },
        el("a", { href: `/admin/geo/replication/${encodeURIComponent(type.name)}` },
          `Replication details: ${type.titlePlural}`)),
    );
  }
  for (const link of nav.querySelectorAll("a")) {
    if (link.getAttribute("href") === location.pathname) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
}

// ---------------------------------------------------------------- polling

let timer = null;
let refreshing = false;
let refreshView = null;

function stopPolling() {
  if (timer) clearTimeout(timer);
  timer = null;
}

function schedule() {
  stopPolling();
  timer = setTimeout(tick, REFRESH_MS);
}

async function tick() {
  if (document.hidden || !refreshView) return; // resumed by visibilitychange
  await refresh();
  schedule();
}

/** Runs the view's refresh once at a time; a 401 asks for the token again. */
async function refresh() {
  if (refreshing || !refreshView) return;
  refreshing = true;
  try {
    await refreshView();
    $("refreshed").textContent =
      `Updated ${new Date().toLocaleTimeString()} · refreshes every ${REFRESH_MS / 1000} s`;
  } catch (error) {
    handle(error);
  } finally {
    refreshing = false;
  }
}

function handle(error) {
  if (error instanceof Unauthorized) {
    sessionStorage.removeItem(TOKEN_KEY);
    askForToken(
      "This token was refused (401 Unauthorized): it is wrong, revoked, or belongs to another site. " +
        "Enter an admin token of this site.",
    );
  } else {
    say(error.message, true);
  }
}

document.addEventListener("visibilitychange", () => {
  if (!document.hidden && refreshView && token()) {
    refresh().then(schedule);
  } else {
    stopPolling();
  }
});

// ---------------------------------------------------------------- Sites view

async function loadSites() {
  const statuses = await api("/api/v4/geo_sites/status");
  let sites = [];
  if (thisSite && thisSite.primary) sites = await api("/api/v4/geo_sites");
  const byId = new Map(sites.map((s) => [s.id, s]));
  const container = $("sites");
  const cards = [];
  // Sites without a report yet are shown too, as GitLab shows them.
  const reported = new Set(statuses.map((s) => s.geo_node_id));
  const entries = statuses.map((status) => ({ status, site: byId.get(status.geo_node_id) }));
  for (const site of sites) if (!reported.has(site.id)) entries.push({ status: null, site });
  entries.sort((a, b) => (b.site?.primary ? 1 : 0) - (a.site?.primary ? 1 : 0));
  for (const { status, site } of entries) cards.push(siteCard(status, site));
  container.replaceChildren(...cards);
  sizeBars(container);
}

function siteCard(status, site) {
  const primary = site ? site.primary : thisSite?.primary;
  const name = site ? site.name : thisSite?.name || "this site";
  const url = site ? site.url : thisSite?.url;
  const headingId = `site-${status?.geo_node_id ?? site?.id ?? "current"}`;
  const card = el("article", { class: "site", "aria-labelledby": headingId, "data-site": name });
  const healthy = status && status.healthy;
  card.append(
    el("div", { class: "site-head" },
      el("h2", { id: headingId }, name),
      el("span", { class: "badge plain" }, primary ? "Primary" : "Secondary"),
      status
        ? el("span", { class: `badge ${healthy ? "ok" : "bad"}`, "data-health": status.health_status },
            healthy ? "Healthy" : "Unhealthy")
        : el("span", { class: "badge warn" }, "No status yet")),
  );
  const facts = el("dl", { class: "facts" });
  const fact = (term, ...value) => facts.append(el("dt", {}, term), el("dd", {}, ...value));
  if (url) fact("URL", el("a", { href: url }, url));
  if (status && !healthy) fact("Health", el("span", { class: "error" }, status.health));
  // Background duties that failed since the site started (health.rs).
  const troubled = (status?.duties || []).filter((d) => d.state !== "running" || d.restarts > 0);
  if (troubled.length) {
    fact("Background duties", ...troubled.map((d) =>
      el("span", { class: d.state === "failing" ? "error duty" : "duty", "data-duty": d.name },
        `${d.name}: ${d.state}, ${fmt(d.failures)} failures, ${fmt(d.restarts)} restarts`)));
  }
  if (status) {
    const updated = status.updated_at || status.last_successful_status_check_timestamp;
    if (status.updated_at) fact("Status updated", timeCell(status.updated_at));
    else if (updated) fact("Status updated", timeCell(new Date(updated * 1000).toISOString()));
    if (!primary) {
      const behind =
        status.last_event_id && status.cursor_last_event_id !== null
          ? Math.max(0, status.last_event_id - status.cursor_last_event_id)
          : 0;
      const lagSeconds =
        behind && status.cursor_last_event_timestamp
          ? Math.max(0, status.last_event_timestamp - status.cursor_last_event_timestamp)
          : 0;
      fact("Replication lag",
        el("span", { "data-lag": lagSeconds },
          behind ? `${ago(lagSeconds)} (${fmt(behind)} events behind)` : "Up to date"));
      fact("Last event processed",
        status.cursor_last_event_id === null
          ? `None yet (primary at ${fmt(status.last_event_id)})`
          : `${fmt(status.cursor_last_event_id)} of ${fmt(status.last_event_id)}`);
    } else {
      fact("Last event", fmt(status.last_event_id));
    }
    const scope = status.selective_sync_type
      ? `${status.selective_sync_type}: ${
          (status.namespaces || []).map((n) => n.full_path || n.name || `#${n.id}`).join(", ") || "none"}`
      : "Everything";
    fact("Selective sync", scope);
    if (status.version) fact("Version", `${status.version} (${status.revision || "unknown"})`);
  }
  if (!status) {
    card.append(facts, el("p", { class: "muted" }, "This site has not reported its status yet."));
    return card;
  }
  const table = el("table", { class: "types" },
    el("caption", {}, primary ? `Checksums on ${name}` : `Replication on ${name}`),
    el("thead", {}, el("tr", {},
      el("th", { scope: "col" }, "Data type"),
      el("th", { scope: "col" }, primary ? "Checksummed" : "Synced"),
      el("th", { scope: "col" }, "Verified"),
      el("th", { scope: "col" }, "Failed"),
      el("th", { scope: "col" }, "Total"),
      primary ? null : el("th", { scope: "col" }, "Details"))),
  );
  const body = el("tbody");
  for (const type of types) {
    const p = type.namePlural;
    const row = el("tr", { "data-type": type.name });
    row.append(el("th", { scope: "row" }, type.titlePlural));
    const count = (suffix) => status[`${p}${suffix}`];
    if (primary) {
      const total = count("_checksum_total_count");
      row.append(
        meter("verified", `${type.titlePlural} checksummed`, count("_checksummed_count"), total),
        el("td", { class: "muted" }, "Not applicable"),
        meter("failed", `${type.titlePlural} failed to checksum`, count("_checksum_failed_count"), total),
        el("td", { class: "num", "data-count": "total" }, fmt(count("_count"))),
      );
    } else {
      // Registries, and the records in scope without one yet (status/fields.rs).
      const total = count("_count") ?? count("_registry_count");
      const failed = count("_failed_count");
      const verificationFailed = count("_verification_failed_count");
      const failedAll =
        failed === null || failed === undefined ? null : failed + (verificationFailed || 0);
      row.append(
        meter("synced", `${type.titlePlural} synced`, count("_synced_count"), total),
        meter("verified", `${type.titlePlural} verified`, count("_verified_count"), total),
        meter("failed", `${type.titlePlural} failed (sync or verification)`, failedAll, total),
        el("td", { class: "num", "data-count": "total" }, fmt(total)),
        el("td", {},
          el("a", {
            href: `${url || ""}/admin/geo/replication/${encodeURIComponent(type.name)}`,
            "aria-label": `Replication details of ${type.titlePlural} on ${name}`,
          }, "Replication details")),
      );
    }
    body.append(row);
  }
  table.append(body);
  card.append(el("div", { class: "site-body" }, facts, el("div", { class: "table-wrap" }, table)));
  // Registry removals a pass holds for an operator (Geohost's guard).
  for (const hold of status.removal_holds || []) {
    const type = types.find((t) => t.name === hold.replicable_name);
    const title = type ? type.titlePlural : hold.replicable_name;
    card.append(el("p", { class: "hold", role: "alert", "data-hold": hold.replicable_name },
      el("strong", {}, `Removals held: ${fmt(hold.removals)} of ${fmt(hold.registries)} ${title}`),
      ` would be removed (${hold.cause === "swap" ? "after a type version change" : "by a consistency pass"}`,
      `${hold.confirmed_at ? ", confirmed: the next pass makes them" : ""}). `,
      "Nothing is removed until an operator confirms with ",
      el("code", {}, `geohost registry confirm-removals ${hold.replicable_name}`),
      " or GraphQL ", el("code", {}, "geoRegistriesConfirmRemovals"),
      "; removed blobs stay in the quarantine, and ",
      el("code", {}, "geohost registry restore"), " brings them back."));
  }
  return card;
}

// ---------------------------------------------------------------- Replication view

const view = {
  type: null,
  filters: { replicationState: "", verificationState: "", keyword: "" },
  // The page shown: cursors as the API gave them, and its first row's position.
  page: { after: null, before: null, start: 0 },
  pageInfo: null,
  count: 0,
  selected: new Set(),
  rows: [],
};

const ROW_FIELDS = `id state verificationState modelRecordId retryCount retryAt lastSyncFailure
  lastSyncedAt verifiedAt verificationFailure verificationRetryAt createdAt`;

function readFiltersFromUrl() {
  const query = new URLSearchParams(location.search);
  view.filters.replicationState = (query.get("replication_state") || "").toUpperCase();
  view.filters.verificationState = (query.get("verification_state") || "").toUpperCase();
  view.filters.keyword = query.get("keyword") || "";
  $("filter-replication").value = view.filters.replicationState;
  $("filter-verification").value = view.filters.verificationState;
  $("filter-keyword").value = view.filters.keyword;
}

function writeFiltersToUrl() {
  const query = new URLSearchParams();
  const f = view.filters;
  if (f.replicationState) query.set("replication_state", f.replicationState.toLowerCase());
  if (f.verificationState) query.set("verification_state", f.verificationState.toLowerCase());
  if (f.keyword) query.set("keyword", f.keyword);
  const search = query.toString();
  history.replaceState(null, "", `${location.pathname}${search ? `?${search}` : ""}`);
}

async function loadRegistries() {
  const type = view.type;
  const f = view.filters;
  const backward = view.page.before !== null;
  const variables = {
    replicationState: f.replicationState || null,
    verificationState: f.verificationState || null,
    keyword: f.keyword || null,
    first: backward ? null : PAGE_SIZE,
    after: backward ? null : view.page.after,
    last: backward ? PAGE_SIZE : null,
    before: view.page.before,
  };
  const data = await graphql(
    `query($replicationState: ReplicationStateEnum, $verificationState: VerificationStateEnum,
           $keyword: String, $first: Int, $after: String, $last: Int, $before: String) {
      geoNode {
        name
        registries: ${type.graphqlFieldName}(replicationState: $replicationState,
            verificationState: $verificationState, keyword: $keyword,
            first: $first, after: $after, last: $last, before: $before) {
          count(limit: ${COUNT_LIMIT})
          nodes { ${ROW_FIELDS} }
          pageInfo { hasNextPage hasPreviousPage startCursor endCursor }
        }
      }
    }`,
    variables,
  );
  const connection = data.geoNode ? data.geoNode.registries : null;
  view.rows = connection ? connection.nodes : [];
  view.pageInfo = connection ? connection.pageInfo : { hasNextPage: false, hasPreviousPage: false };
  view.count = connection ? connection.count : 0;
  // A page emptied by a filter change elsewhere: go back to the first one.
  if (!view.rows.length && view.page.start > 0) {
    view.page = { after: null, before: null, start: 0 };
    return loadRegistries();
  }
  renderRegistries();
}

/** Keeps keyboard focus on the same control across a re-render. */
function focusKey() {
  const active = document.activeElement;
  return active && active.dataset ? active.dataset.focusKey : null;
}

function restoreFocus(key) {
  if (!key) return;
  const target = document.querySelector(`[data-focus-key="${CSS.escape(key)}"]`);
  // The row left the page (a filter no longer matches it): focus the table.
  (target || $("registries")).focus();
}

function renderRegistries() {
  const type = view.type;
  const key = focusKey();
  const rows = view.rows.map((r) => registryRow(r));
  const tbody = $("registry-rows");
  if (!rows.length) {
    rows.push(el("tr", {}, el("td", { colspan: 8, class: "empty" },
      thisSite && thisSite.primary
        ? "Registries live on secondary sites: open this page on a secondary."
        : "No registry matches these filters.")));
  }
  tbody.replaceChildren(...rows);
  const first = view.rows.length ? view.page.start + 1 : 0;
  const last = view.page.start + view.rows.length;
  // GitLab's `count` stops at its limit and answers limit + 1 beyond it.
  const total = view.count > COUNT_LIMIT ? `${fmt(COUNT_LIMIT)}+` : fmt(view.count);
  const range = view.rows.length
    ? `${fmt(first)}–${fmt(last)} of ${total}`
    : `0 of ${total}`;
  const noun = view.count === 1 ? "registry" : "registries";
  $("registries-caption").textContent =
    `${type.titlePlural} on ${thisSite ? thisSite.name : "this site"}: ${range} ${noun}`;
  $("registries").dataset.count = view.count;
  $("page-range").textContent = view.rows.length ? `Showing ${range}` : "";
  $("page-prev").disabled = !view.pageInfo.hasPreviousPage && view.page.start === 0;
  $("page-first").disabled = view.page.start === 0 && !view.pageInfo.hasPreviousPage;
  $("page-next").disabled = !view.pageInfo.hasNextPage;
  const onPage = view.rows.map((r) => r.id);
  const selectPage = $("select-page");
  selectPage.checked = onPage.length > 0 && onPage.every((id) => view.selected.has(id));
  selectPage.indeterminate = !selectPage.checked && onPage.some((id) => view.selected.has(id));
  updateBulk();
  restoreFocus(key);
}

function registryRow(r) {
  const number = r.id.split("/").pop();
  const selected = view.selected.has(r.id);
  const failure = r.lastSyncFailure || r.verificationFailure;
  const retry = r.state === "FAILED" && r.retryAt ? r.retryAt : r.verificationRetryAt;
  return el("tr", { "data-registry": number, "data-record": r.modelRecordId, class: selected ? "selected" : null },
    el("td", { class: "check" },
      el("input", {
        type: "checkbox",
        checked: selected,
        "aria-label": `Select registry ${number}`,
        "data-focus-key": `select-${number}`,
        onchange: (event) => {
          if (event.target.checked) view.selected.add(r.id);
          else view.selected.delete(r.id);
          event.target.closest("tr").classList.toggle("selected", event.target.checked);
          renderRegistries();
        },
      })),
    el("th", { scope: "row" }, `Registry ${number}`,
      el("div", { class: "muted" }, `Record ${r.modelRecordId}`)),
    el("td", { "data-field": "state" }, stateBadge(r.state),
      r.retryCount ? el("div", { class: "muted" }, plural(r.retryCount, "retry", "retries")) : null),
    el("td", { "data-field": "verificationState" }, stateBadge(r.verificationState)),
    el("td", {}, timeCell(r.lastSyncedAt)),
    el("td", {}, timeCell(r.verifiedAt)),
    el("td", { class: "failure" },
      failure ? el("div", {}, failure) : el("span", { class: "muted" }, "None"),
      failure && retry ? el("div", { class: "muted" }, "Next retry ", timeCell(retry)) : null),
    el("td", { class: "actions" },
      el("button", {
        type: "button", class: "small", "data-action": "RESYNC", "data-focus-key": `resync-${number}`,
        "aria-label": `Resync registry ${number}`, onclick: () => updateOne(r.id, "RESYNC", number),
      }, "Resync"),
      el("button", {
        type: "button", class: "small", "data-action": "REVERIFY", "data-focus-key": `reverify-${number}`,
        "aria-label": `Reverify registry ${number}`, onclick: () => updateOne(r.id, "REVERIFY", number),
      }, "Reverify")),
  );
}

function updateBulk() {
  const n = view.selected.size;
  $("resync-selected").disabled = n === 0;
  $("reverify-selected").disabled = n === 0;
  $("resync-selected").textContent = `Resync selected (${n})`;
  $("reverify-selected").textContent = `Reverify selected (${n})`;
  const keyword = Boolean(view.filters.keyword);
  const primary = thisSite && thisSite.primary;
  $("resync-all").disabled = keyword || primary;
  $("reverify-all").disabled = keyword || primary;
  const f = view.filters;
  const scope = [f.replicationState && `replication ${titleCase(f.replicationState)}`,
    f.verificationState && `verification ${titleCase(f.verificationState)}`].filter(Boolean);
  $("bulk-note").textContent = keyword
    ? "“All” acts on state filters only: clear the search, or select rows."
    : scope.length ? `“All” means every registry with ${scope.join(" and ")}.` : "";
}

async function updateOne(id, action, number) {
  const verb = action === "RESYNC" ? "Resync" : "Reverify";
  try {
    const data = await graphql(
      `mutation($id: GeoBaseRegistryID!, $action: GeoRegistryAction!) {
        geoRegistriesUpdate(input: { registryId: $id, action: $action }) { errors }
      }`,
      { id, action },
    );
    const errors = data.geoRegistriesUpdate.errors;
    if (errors.length) throw new Error(errors.join("; "));
    say(`${verb} of registry ${number} queued.`);
    await refresh();
  } catch (error) {
    if (error instanceof Unauthorized) handle(error);
    else say(`${verb} of registry ${number} failed: ${error.message}`, true);
  }
}

async function updateBulkAction(action, onlySelected) {
  const type = view.type;
  const f = view.filters;
  const what = action === "RESYNC_ALL" ? "Resync" : "Reverify";
  const input = { registryClass: type.graphqlRegistryClass, action };
  let description;
  if (onlySelected) {
    input.ids = [...view.selected];
    description = `${input.ids.length} selected registries`;
  } else {
    if (f.replicationState) input.replicationState = f.replicationState;
    if (f.verificationState) input.verificationState = f.verificationState;
    description = `every ${type.title} registry${f.replicationState || f.verificationState ? " matching the state filters" : ""}`;
    if (!window.confirm(`${what} ${description}?`)) return;
  }
  try {
    const data = await graphql(
      `mutation($input: GeoRegistriesBulkUpdateInput!) {
        geoRegistriesBulkUpdate(input: $input) { errors }
      }`,
      { input },
    );
    const errors = data.geoRegistriesBulkUpdate.errors;
    if (errors.length) throw new Error(errors.join("; "));
    say(`${what} of ${description} started; it runs in the background.`);
    if (onlySelected) view.selected.clear();
    await refresh();
  } catch (error) {
    if (error instanceof Unauthorized) handle(error);
    else say(`${what} failed: ${error.message}`, true);
  }
}

function wireReplicationControls() {
  const apply = () => {
    view.filters = {
      replicationState: $("filter-replication").value,
      verificationState: $("filter-verification").value,
      keyword: $("filter-keyword").value.trim(),
    };
    view.page = { after: null, before: null, start: 0 };
    // A selection is of rows seen under the old filters.
    view.selected.clear();
    writeFiltersToUrl();
    refresh();
  };
  $("filters").addEventListener("submit", (event) => {
    event.preventDefault();
    apply();
  });
  $("filter-replication").addEventListener("change", apply);
  $("filter-verification").addEventListener("change", apply);
  $("page-next").addEventListener("click", () => {
    if (!view.pageInfo || !view.pageInfo.hasNextPage) return;
    view.page = { after: view.pageInfo.endCursor, before: null, start: view.page.start + view.rows.length };
    refresh();
  });
  $("page-prev").addEventListener("click", () => {
    view.page = {
      after: null,
      before: view.pageInfo.startCursor,
      start: Math.max(0, view.page.start - PAGE_SIZE),
    };
    refresh();
  });
  $("page-first").addEventListener("click", () => {
    view.page = { after: null, before: null, start: 0 };
    refresh();
  });
  $("select-page").addEventListener("change", (event) => {
    for (const r of view.rows) {
      if (event.target.checked) view.selected.add(r.id);
      else view.selected.delete(r.id);
    }
    renderRegistries();
  });
  $("resync-selected").addEventListener("click", () => updateBulkAction("RESYNC_ALL", true));
  $("reverify-selected").addEventListener("click", () => updateBulkAction("REVERIFY_ALL", true));
  $("resync-all").addEventListener("click", () => updateBulkAction("RESYNC_ALL", false));
  $("reverify-all").addEventListener("click", () => updateBulkAction("REVERIFY_ALL", false));
}

// ---------------------------------------------------------------- start

async function start() {
  if (!token()) {
    askForToken("");
    return;
  }
  try {
    await loadBasics();
  } catch (error) {
    handle(error);
    return;
  }
  const path = location.pathname.replace(/\/+$/, "");
  const match = path.match(/^\/admin\/geo\/replication\/([^/]+)$/);
  if (match) {
    const name = decodeURIComponent(match[1]);
    view.type = types.find((t) => t.name === name);
    if (!view.type) {
      showOnly("replication-view");
      $("replication-title").textContent = "Replication details";
      say(`No replicable type named “${name}” is installed on this site.`, true);
      return;
    }
    document.title = `${view.type.titlePlural} · Geo · Geohost`;
    $("replication-title").textContent = `${view.type.titlePlural}: replication details`;
    $("replication-summary").textContent = thisSite && thisSite.primary
      ? "This is the primary: registries are tracked on each secondary. Open this page on a secondary's own URL."
      : "Every registry of this type on this secondary. Resync downloads the blob again; reverify checks it again.";
    readFiltersFromUrl();
    showOnly("replication-view");
    refreshView = loadRegistries;
  } else {
    document.title = "Geo sites · Geohost";
    showOnly("sites-view");
    refreshView = loadSites;
  }
  await refresh();
  schedule();
}

$("login-form").addEventListener("submit", signIn);
$("sign-out").addEventListener("click", signOut);
wireReplicationControls();
start();
