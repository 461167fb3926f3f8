"use strict";
// The status page holds no data: it reads the node's JSON routes with the API's own rules.
// Everything that comes from the store or from peers (keys, values, names, reasons) goes
// into the page as textContent, never as HTML.

const TOKEN_KEY = "meshd.api.token";
const REFRESH_MS = 5000;
// The lists are read whole from the store's index: less often than the status.
const LISTS_EVERY = 6;
const LATEST = 50;
const SHOWN_VALUE_CHARS = 200;

const $ = (id) => document.getElementById(id);

/** An element holding `text` as text. */
function el(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (className) node.className = className;
  return node;
}

function row(cells) {
  const tr = document.createElement("tr");
  for (const cell of cells) {
    const td = document.createElement("td");
    td.append(cell instanceof Node ? cell : el("span", cell));
    tr.append(td);
  }
  return tr;
}

class Unauthorized extends Error {}

/** GET a JSON route, with the token when this tab has one. */
async function api(path) {
  const headers = { Accept: "application/json" };
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) headers.Authorization = "Bearer " + token;
  const response = await fetch(path, { headers, cache: "no-store", credentials: "omit" });
  if (response.status === 401) throw new Unauthorized();
  const body = await response.json().catch(() => null);
  if (!response.ok) throw new Error((body && body.error) || "HTTP " + response.status);
  return body;
}

function time(seconds) {
  if (!seconds) return "never";
  return new Date(seconds * 1000).toISOString().replace(".000Z", "Z");
}

function bytes(count) {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let value = count;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return (unit === 0 ? String(value) : value.toFixed(1)) + " " + units[unit];
}

function shown(value) {
  const text = typeof value === "string" ? value : JSON.stringify(value);
  return text.length > SHOWN_VALUE_CHARS ? text.slice(0, SHOWN_VALUE_CHARS) + "…" : text;
}

function showError(error) {
  const box = $("error");
  box.textContent = error ? String(error.message || error) : "";
  box.hidden = !error;
}

function askForToken() {
  $("main").hidden = true;
  $("login").hidden = false;
  $("node-state").textContent = "token needed";
  $("token").focus();
}

function showNode(status) {
  $("node-state").textContent = status.running ? "running" : "not running";
  $("node-state").className = "badge " + (status.running ? "up" : "down");
  const facts = $("node-facts");
  facts.replaceChildren();
  const fact = (name, value, id, className) => {
    facts.append(el("dt", name));
    const dd = el("dd", value, className);
    if (id) dd.id = id;
    facts.append(dd);
  };
  fact("Node id", status.node_id, "node-id", "mono");
  fact("Listening on", status.listen || "not listening", "node-listen", "mono");
  fact("Writes", status.read_only ? "refused: " + status.read_only : "accepted", "node-writes",
    status.read_only ? "bad" : "up");
  if (status.repair) fact("Repair", status.repair, "node-repair");
  fact("Documents", status.documents);
  fact("Memory entries", status.memory_entries, "node-entries");
  fact("Skills", status.skills, "node-skills");
  fact("Conflicts", status.conflicts, "node-conflicts", status.conflicts ? "bad" : null);
  fact("Sent to peers", bytes(status.bytes_sent));
  const files = status.files || { collisions: [], refused: [] };
  for (const refused of files.refused || []) {
    fact("Cache file not taken in", refused.file + ": " + refused.reason, null, "bad");
  }
}

function problems(peer) {
  const box = document.createElement("div");
  if (peer.link_failure) {
    const f = peer.link_failure;
    box.append(el("div", "links failing (" + f.failures + " in a row, last " + time(f.at) + "): " +
      f.reason, "bad"));
  }
  if (peer.refused) {
    const r = peer.refused;
    box.append(el("div", "its changes to " + r.doc + " refused at " + time(r.at) + ": " + r.reason,
      "bad"));
  }
  if (peer.unreachable) {
    box.append(el("div", "dialing it failed at " + time(peer.unreachable.at) + ":", "bad"));
    for (const a of peer.unreachable.addresses || []) {
      box.append(el("div", a.address + ": " + a.reason, "bad"));
    }
  }
  if (!peer.link_failure && !peer.refused && !peer.unreachable) {
    box.append(el("span", "none", "muted"));
  }
  return box;
}

/** The peer's clock against this node's, in words; a skew over 10 s is marked. */
function clockOffset(ms) {
  const seconds = Math.abs(ms) / 1000;
  if (seconds < 1) return "within 1 s";
  const text = seconds.toFixed(1) + " s " + (ms > 0 ? "ahead" : "behind");
  return seconds > 10 ? text + " (set up NTP)" : text;
}

function showPeers(peers) {
  const rows = $("peer-rows");
  rows.replaceChildren();
  $("no-peers").hidden = peers.length > 0;
  for (const peer of peers) {
    const who = document.createElement("div");
    who.append(el("div", peer.name || "(no name)", "peer-name"));
    who.append(el("div", peer.id, "mono muted"));
    const addresses = (peer.addresses || []).join(", ");
    if (addresses) who.append(el("div", addresses, "mono muted"));
    const state = el("span", peer.connected ? "connected" : "not connected",
      "peer-state " + (peer.connected ? "up" : "down"));
    const link = peer.link;
    if (link) {
      state.title = "since " + time(link.since) + ", round trip " + link.rtt_ms + " ms";
    }
    const theirs = peer.changes_behind == null ? "never synced" :
      peer.changes_behind + " changes (" + peer.documents_behind + " documents)";
    const ours = link && link.changes_awaited != null ? link.changes_awaited + " changes" : "unknown";
    const clock = link && link.clock_offset_ms != null ? clockOffset(link.clock_offset_ms) : "unknown";
    const tr = row([who, state, time(peer.last_sync), el("span", theirs, "behind-theirs"),
      el("span", ours, "behind-ours"), el("span", clock, "clock"), bytes(peer.bytes_sent || 0),
      problems(peer)]);
    tr.dataset.peer = peer.id;
    rows.append(tr);
  }
}

function openButton(text, onOpen) {
  const button = el("button", text, "link");
  button.type = "button";
  button.addEventListener("click", onOpen);
  return button;
}

function memoryPath(scope, key) {
  return "/mesh/memory/" + encodeURIComponent(scope) + "/" + encodeURIComponent(key);
}

function showDetail(title, meta, body) {
  $("detail-title").textContent = title;
  $("detail-meta").textContent = meta;
  $("detail-body").textContent = body;
  $("detail").hidden = false;
}

async function openEntry(scope, key) {
  try {
    const entry = await api(memoryPath(scope, key));
    showDetail(scope + " : " + key, "written by " + entry.node_id + " at " + time(entry.updated_at),
      JSON.stringify(entry.value, null, 2));
  } catch (error) {
    handle(error);
  }
}

async function openSkill(name) {
  try {
    const skill = await api("/mesh/skills/" + encodeURIComponent(name));
    showDetail("skill " + skill.name, "from " + skill.source_node + " at " + time(skill.updated_at),
      skill.content === null ? "(a file at " + skill.path + ")" : skill.content);
  } catch (error) {
    handle(error);
  }
}

function showEntries(entries) {
  const rows = $("entry-rows");
  rows.replaceChildren();
  $("no-entries").hidden = entries.length > 0;
  for (const entry of entries) {
    const key = openButton(entry.key, () => openEntry(entry.scope, entry.key));
    const tr = row([entry.scope, key, el("div", shown(entry.value), "value mono"), entry.node_id,
      time(entry.updated_at)]);
    tr.className = "entry";
    rows.append(tr);
  }
}

/** One version of a conflicting entry: what it holds, who wrote it, when. */
function version(v) {
  const box = document.createElement("div");
  const what = v.deleted ? "(deleted)" : "content" in v ? shown(v.content) : shown(v.value);
  box.append(el("div", what, "value mono"));
  box.append(el("div", "by " + (v.node_id || v.source_node) + " at " + time(v.updated_at), "muted"));
  return box;
}

function showConflicts(list) {
  const rows = $("conflict-rows");
  rows.replaceChildren();
  $("conflict-table").hidden = list.total === 0;
  $("conflict-note").textContent = list.total === 0 ? "No conflicts." :
    (list.total === 1 ? "1 entry holds" : list.total + " entries hold") +
    " versions written concurrently on different nodes. Every node " +
    "shows the newest; writing the entry again settles it." +
    (list.total > list.conflicts.length ? " The first " + list.conflicts.length + " are listed." : "");
  for (const conflict of list.conflicts) {
    const [winner, ...others] = conflict.versions;
    const name = conflict.skill !== undefined ?
      openButton("skill " + conflict.skill, () => openSkill(conflict.skill)) :
      openButton(conflict.scope + " : " + conflict.key, () => openEntry(conflict.scope, conflict.key));
    const also = document.createElement("div");
    for (const other of others) also.append(version(other));
    const tr = row([name, version(winner), also]);
    tr.className = "conflict";
    rows.append(tr);
  }
}

function showSkills(skills) {
  const rows = $("skill-rows");
  rows.replaceChildren();
  $("no-skills").hidden = skills.length > 0;
  for (const skill of skills) {
    rows.append(row([openButton(skill.name, () => openSkill(skill.name)), skill.source_node,
      time(skill.updated_at)]));
  }
}

async function search(text) {
  const hits = $("hits");
  hits.replaceChildren();
  $("search-note").textContent = "";
  if (!text) return;
  try {
    const found = await api("/mesh/memory?q=" + encodeURIComponent(text) + "&limit=25");
    $("search-note").textContent = found.length === 0 ? "Nothing found." : found.length + " found";
    for (const hit of found) {
      const li = el("li", null, "hit");
      li.append(openButton(hit.scope + " : " + hit.key, () => openEntry(hit.scope, hit.key)));
      li.append(el("div", hit.snippet, "muted"));
      hits.append(li);
    }
  } catch (error) {
    handle(error);
  }
}

function handle(error) {
  if (error instanceof Unauthorized) {
    sessionStorage.removeItem(TOKEN_KEY);
    askForToken();
  } else {
    showError(error);
  }
}

let refreshes = 0;

async function refresh() {
  const withLists = refreshes % LISTS_EVERY === 0;
  try {
    const [status, entries, skills, conflicts] = await Promise.all([
      api("/mesh/status"),
      withLists ? api("/mesh/memory?limit=" + LATEST) : null,
      withLists ? api("/mesh/skills") : null,
      withLists ? api("/mesh/conflicts?limit=" + LATEST) : null,
    ]);
    refreshes += 1;
    $("login").hidden = true;
    $("main").hidden = false;
    showError(null);
    showNode(status);
    showPeers(status.peers);
    if (entries) showEntries(entries);
    if (skills) showSkills(skills);
    if (conflicts) showConflicts(conflicts);
    $("updated").textContent = "updated " + new Date().toLocaleTimeString();
    return true;
  } catch (error) {
    handle(error);
    return false;
  }
}

/** A search named in the fragment (`#q=words`), which never reaches the server. */
function searchFromFragment() {
  const q = new URLSearchParams(location.hash.slice(1)).get("q");
  if (q) {
    $("q").value = q;
    search(q);
  }
}

$("login-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const token = $("token").value.trim();
  $("token").value = "";
  if (!token) return;
  sessionStorage.setItem(TOKEN_KEY, token);
  if (await refresh()) searchFromFragment();
});

$("search-form").addEventListener("submit", (event) => {
  event.preventDefault();
  search($("q").value.trim());
});

(async () => {
  if (await refresh()) searchFromFragment();
  setInterval(() => {
    if (!$("main").hidden) refresh();
  }, REFRESH_MS);
})();
