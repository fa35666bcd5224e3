// couchvault dashboard: plain JavaScript over the daemon's API (docs/API.md). Every value
// that comes from the API goes into the page as text, never as markup.
"use strict";

const TOKEN_KEY = "couchvault-token";
let me = null; // {admin, tenant}
let timer = null; // the current view's refresh

// ---- helpers ---------------------------------------------------------------------------

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else if (k === "text") e.textContent = v;
    else e.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

function svg(tag, attrs) {
  const e = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
  return e;
}

function bytes(n) {
  if (n === undefined || n === null) return "";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return (i === 0 ? n : n.toFixed(1)) + " " + units[i];
}

function age(iso) {
  if (!iso) return "never";
  const s = Math.max(0, (Date.now() - Date.parse(iso)) / 1000);
  if (s < 90) return Math.round(s) + " s ago";
  if (s < 5400) return Math.round(s / 60) + " min ago";
  if (s < 172800) return (s / 3600).toFixed(1) + " h ago";
  return Math.round(s / 86400) + " days ago";
}

function when(iso, tz) {
  if (!iso) return "";
  const opts = { dateStyle: "medium", timeStyle: "short" };
  if (tz) opts.timeZone = tz;
  try { return new Intl.DateTimeFormat(undefined, opts).format(new Date(iso)) + (tz ? " " + tz : ""); }
  catch (_) { return iso; }
}

function secs(s) {
  if (s === undefined || s === null) return "";
  if (s < 120) return s.toFixed(1) + " s";
  return Math.floor(s / 60) + " min " + Math.round(s % 60) + " s";
}

function say(text) {
  const s = document.getElementById("status");
  s.textContent = text;
  clearTimeout(say.t);
  say.t = setTimeout(() => { s.textContent = ""; }, 6000);
}

async function api(method, path, body, raw) {
  const headers = { Authorization: "Bearer " + sessionStorage.getItem(TOKEN_KEY) };
  let payload;
  if (raw) { payload = raw; headers["Content-Type"] = "application/octet-stream"; }
  else if (body !== undefined) { payload = JSON.stringify(body); headers["Content-Type"] = "application/json"; }
  const r = await fetch(path, { method, headers, body: payload });
  const text = await r.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch (_) { data = text; }
  if (r.status === 401) { signOut("Your token was refused: sign in again."); throw new Error("unauthorized"); }
  if (!r.ok) throw new Error((data && data.error) || ("HTTP " + r.status));
  return data;
}

function tenantQuery(t) { return me.admin && t ? "?tenant=" + encodeURIComponent(t) : ""; }

function stateCell(state) { return el("td", { class: "state-" + state, text: state }); }

function table(headers, rows, label) {
  return el("table", { "aria-label": label },
    el("thead", {}, el("tr", {}, headers.map(h => el("th", { scope: "col", class: h.num ? "num" : null, text: h.text || h })))),
    el("tbody", {}, rows));
}

function confirmThen(text, action) {
  return () => { if (window.confirm(text)) action(); };
}

// ---- sign in ---------------------------------------------------------------------------

function signOut(why) {
  sessionStorage.removeItem(TOKEN_KEY);
  me = null;
  clearInterval(timer);
  document.getElementById("view").replaceChildren();
  document.getElementById("nav").hidden = true;
  document.getElementById("signout").hidden = true;
  document.getElementById("who").textContent = "";
  document.getElementById("signin").hidden = false;
  document.getElementById("signin-error").textContent = why || "";
  document.getElementById("token").focus();
}

async function signIn(token) {
  sessionStorage.setItem(TOKEN_KEY, token);
  try {
    me = await api("GET", "/v1/whoami");
  } catch (e) {
    if (e.message !== "unauthorized") signOut("Sign-in failed: " + e.message);
    return;
  }
  document.getElementById("signin").hidden = true;
  document.getElementById("nav").hidden = false;
  document.getElementById("signout").hidden = false;
  document.getElementById("who").textContent = me.admin ? "admin" : "tenant " + me.tenant;
  route();
}

// ---- views -----------------------------------------------------------------------------

const views = { overview, jobs, backups, schedules, policies };

function route() {
  if (!me) return;
  clearInterval(timer);
  const [name, arg] = (location.hash.replace(/^#\//, "") || "overview").split("/");
  const view = views[name] || overview;
  for (const a of document.querySelectorAll("header nav a")) {
    if (a.id === "nav-" + (views[name] ? name : "overview")) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  const root = document.getElementById("view");
  root.replaceChildren(el("p", { class: "muted", text: "Loading…" }));
  view(root, arg && decodeURIComponent(arg)).catch(e => {
    if (e.message !== "unauthorized") root.replaceChildren(el("p", { class: "error", role: "alert", text: "Could not load: " + e.message }));
  });
}

function chart(history) {
  const w = 320, h = 80;
  const s = svg("svg", { class: "chart", viewBox: `0 0 ${w} ${h}`, role: "img",
    "aria-label": "stored bytes (bars) and duration (line) of the last " + history.length + " backups" });
  if (!history.length) return el("p", { class: "muted chart-empty", text: "No backups yet." });
  const maxB = Math.max(...history.map(p => p.stored_bytes), 1);
  const maxD = Math.max(...history.map(p => p.duration_secs), 0.001);
  const step = Math.min(w / history.length, 26);
  history.forEach((p, i) => {
    const bh = Math.max(1, (p.stored_bytes / maxB) * (h - 4));
    const bar = svg("rect", { class: "bar", x: i * step + 1, y: h - bh, width: Math.max(1, step - 2), height: bh });
    bar.append(svg("title"));
    bar.firstChild.textContent = p.backup_id + ": " + bytes(p.stored_bytes) + ", " + secs(p.duration_secs);
    s.append(bar);
  });
  const pts = history.map((p, i) => `${i * step + step / 2},${h - 2 - (p.duration_secs / maxD) * (h - 8)}`);
  s.append(svg("polyline", { class: "line", points: pts.join(" ") }));
  return s;
}

async function overview(root) {
  const o = await api("GET", "/v1/overview");
  const cards = o.instances.map(i => el("section", { class: "card", "aria-label": "instance " + i.tenant + "/" + i.instance },
    el("h3", {}, (me.admin ? i.tenant + " / " : "") + i.instance, i.registered ? null : el("span", { class: "muted", text: " (not registered)" })),
    el("dl", {},
      el("dt", { text: "Last success" }),
      el("dd", { class: i.stale ? "stale" : "fresh" }, i.last_success_at ? age(i.last_success_at) : "never", i.stale ? " — stale" : ""),
      el("dt", { text: "Next run" }), el("dd", {}, i.next_run ? when(i.next_run) + " (" + i.next_run_schedule + ")" : "none scheduled"),
      el("dt", { text: "Stored" }), el("dd", {}, bytes(i.stored_bytes) + " in " + i.backups + " backups"),
      el("dt", { text: "Failures (7 days)" }), el("dd", { class: i.failures_7d ? "error" : null, text: String(i.failures_7d) }),
      el("dt", { text: "Running" }), el("dd", {}, i.running.length ? el("a", { href: "#/jobs", text: i.running.length + " job(s)" }) : "nothing")),
    chart(i.history),
    el("p", { class: "legend", text: "bars: stored bytes per backup; line: backup duration" }),
    el("div", { class: "actions" },
      el("a", { class: "button", href: "#/backups/" + encodeURIComponent(i.tenant + "/" + i.instance), text: "Backups" }),
      el("button", { type: "button", onclick: () => backupNow(i) , text: "Back up now" }))));
  root.replaceChildren(el("h2", { text: "Overview" }),
    el("p", { class: "muted", text: "An instance is stale (red) when its last successful backup is older than " + (o.stale_after_secs / 3600).toFixed(1).replace(/\.0$/, "") + " h." }),
    cards.length ? el("div", { class: "cards" }, cards) : el("p", { text: "No instances yet: the admin registers them (couchvault instance add)." }));
  timer = setInterval(() => { if (document.getElementById("view").contains(root.firstChild)) overview(root).catch(() => {}); }, 10000);
}

async function backupNow(i) {
  try {
    const job = await api("POST", "/v1/backups" + tenantQuery(i.tenant), { instance: i.instance });
    say("Backup started: job " + job.id);
    location.hash = "#/jobs";
  } catch (e) { say("Backup not started: " + e.message); }
}

function progressCell(j) {
  const p = j.progress || {};
  const done = p.bytes_done || 0, total = p.bytes_total || 0;
  const eta = p.rate > 0 && total > done ? Math.round((total - done) / p.rate) : null;
  return el("td", {},
    el("progress", { max: total || 1, value: done, "aria-label": "progress of job " + j.id }),
    el("div", { class: "mono" }, bytes(done) + " / " + bytes(total) + ", files " + (p.files_done || 0) + "/" + (p.files_total || 0)
      + ", " + bytes(p.rate || 0) + "/s" + (eta !== null ? ", ETA " + secs(eta) : "")));
}

async function jobs(root) {
  const draw = async () => {
    const all = await api("GET", "/v1/jobs");
    all.sort((a, b) => (b.created_at || "").localeCompare(a.created_at || ""));
    const running = all.filter(j => j.state === "running");
    const done = all.filter(j => j.state !== "running").slice(0, 100);
    root.replaceChildren(el("h2", { text: "Jobs" }),
      el("h3", { text: "Running" }),
      running.length ? table(["Job", "Kind", "Instance", "Started", "Progress", ""], running.map(j => el("tr", { "data-job": j.id },
        el("td", { class: "mono", text: j.id }), el("td", { text: j.request.kind }),
        el("td", { text: (me.admin ? j.tenant + "/" : "") + (j.request.instance || "") }),
        el("td", { text: when(j.created_at) }), progressCell(j),
        el("td", {}, el("button", { type: "button", class: "danger", onclick: confirmThen("Cancel job " + j.id + "?", () => api("POST", "/v1/jobs/" + j.id + "/cancel", {}).then(draw)), text: "Cancel" })))), "running jobs")
        : el("p", { class: "muted", text: "Nothing is running." }),
      el("h3", { text: "History" }),
      table(["Job", "Kind", "Instance", "Created", "Outcome", { text: "Duration", num: true }, "Result"], done.map(j => el("tr", { "data-job": j.id },
        el("td", { class: "mono", text: j.id }), el("td", { text: j.request.kind + (j.scheduled ? " (scheduled)" : "") }),
        el("td", { text: (me.admin ? j.tenant + "/" : "") + (j.request.instance || "") }),
        el("td", { text: when(j.created_at) }), stateCell(j.state),
        el("td", { class: "num", text: secs(j.duration_secs) }),
        el("td", {}, j.error ? el("span", { class: "error", text: j.error }) : null,
          j.backup_id ? el("div", { class: "mono", text: "backup " + j.backup_id }) : null,
          (j.retention || []).length ? el("details", {}, el("summary", { text: "retention: " + j.retention.filter(v => !v.keep).length + " deleted, " + j.retention.filter(v => v.keep).length + " kept" }),
            el("ul", {}, j.retention.map(v => el("li", {}, el("span", { class: "mono", text: v.id }), " ", v.keep ? "kept" : "deleted", ": ", v.reason)))) : null,
          (j.notes || []).map(n => el("div", { class: "muted", text: n }))))), "job history"));
  };
  await draw();
  // Live progress: every second while a job runs, else every 5 s.
  let last = 0;
  timer = setInterval(() => {
    const busy = root.querySelector("progress") !== null;
    if (busy || Date.now() - last > 5000) { last = Date.now(); draw().catch(() => {}); }
  }, 1000);
}

async function backups(root, which) {
  const o = await api("GET", "/v1/overview");
  const keys = o.instances.map(i => i.tenant + "/" + i.instance);
  const current = which && keys.includes(which) ? which : keys[0];
  const pick = el("select", { id: "backup-instance", onchange: e => { location.hash = "#/backups/" + encodeURIComponent(e.target.value); } },
    keys.map(k => el("option", { value: k, selected: k === current, text: k })));
  root.replaceChildren(el("h2", { text: "Backups" }), el("label", { for: "backup-instance", text: "Instance" }), pick);
  if (!current) { root.append(el("p", { text: "No backups yet." })); return; }
  const [tenant, instance] = current.split("/");
  const rows = await api("GET", "/v1/backups?instance=" + encodeURIComponent(instance) + (me.admin ? "&tenant=" + encodeURIComponent(tenant) : ""));
  const detail = el("div", { id: "backup-detail" });
  root.append(table(["Backup", "Kind", "Finished", { text: "Size", num: true }, { text: "Stored", num: true }, "Node", ""],
    rows.slice().reverse().map(r => {
      if (r.cluster) return clusterRow(detail, tenant, r.cluster);
      const s = r; // the summary's fields are in the row
      return el("tr", { "data-backup": r.backup_id },
        el("td", { class: "mono", text: r.backup_id }),
        el("td", {}, s.kind || "", s.parent ? el("div", { class: "muted mono", text: "on " + s.parent }) : null),
        el("td", { text: when(s.finished_at) }), el("td", { class: "num", text: bytes(s.bytes) }),
        el("td", { class: "num", text: bytes(s.stored_bytes) }), el("td", { text: s.node_name || "" }),
        el("td", { class: "actions" },
          el("button", { type: "button", onclick: () => showBackup(detail, tenant, r.backup_id), text: "Details" }),
          el("button", { type: "button", onclick: () => verify(tenant, r.backup_id), text: "Verify" }),
          el("button", { type: "button", onclick: () => restoreForm(detail, tenant, instance, r), text: "Restore…" }),
          el("button", { type: "button", class: "danger", onclick: confirmThen("Delete backup " + r.backup_id + "? This cannot be undone.", () => remove(tenant, r.backup_id)), text: "Delete" })));
    }), "backups of " + current), detail);
}

// A cluster backup: one row, verified and deleted whole; restored with `couchvault cluster restore`.
function clusterRow(box, tenant, c) {
  return el("tr", { "data-backup": c.backup_id, "data-cluster": "" },
    el("td", { class: "mono", text: c.backup_id }),
    el("td", {}, "cluster", el("div", { class: "muted", text: c.members.length + (c.members.length === 1 ? " member, " : " members, ") + c.databases + " databases" })),
    el("td", { text: when(c.committed_at) }), el("td", { class: "num", text: bytes(c.bytes) }),
    el("td", { class: "num", text: bytes(c.stored_bytes) }), el("td", { text: c.members.map(m => m.node).join(", ") }),
    el("td", { class: "actions" },
      el("button", { type: "button", onclick: () => showCluster(box, c), text: "Details" }),
      el("button", { type: "button", onclick: () => verify(tenant, c.backup_id), text: "Verify" }),
      el("button", { type: "button", class: "danger", onclick: confirmThen("Delete cluster backup " + c.backup_id + " and its " + c.members.length + " member backups? This cannot be undone.", () => remove(tenant, c.backup_id)), text: "Delete" })));
}

function showCluster(box, c) {
  box.replaceChildren(el("section", { class: "panel", "aria-label": "cluster backup " + c.backup_id },
    el("h3", { text: "Cluster backup " + c.backup_id }),
    el("p", {}, "Instance " + c.instance + ", " + c.databases + " databases, taken " + when(c.started_at) + " to " + when(c.committed_at) +
      ". Restore it into a cluster of any size with: couchvault cluster restore " + c.backup_id + " --instance " + c.instance + " --node NAME=DIR …"),
    table(["Member backup", "Node", { text: "Shard files", num: true }, { text: "Stored", num: true }], c.members.map(m =>
      el("tr", {}, el("td", { class: "mono", text: m.backup_id }), el("td", { text: m.node }),
        el("td", { class: "num", text: m.shard_files }), el("td", { class: "num", text: bytes(m.stored_bytes) }))), "members of " + c.backup_id)));
  box.querySelector("h3").focus?.();
}

async function showBackup(box, tenant, id) {
  const m = await api("GET", "/v1/backups/" + id + tenantQuery(tenant));
  const files = (m.files || []);
  const dbs = Object.entries((m.couchdb && m.couchdb.databases) || {});
  box.replaceChildren(el("section", { class: "panel", "aria-label": "backup " + id },
    el("h3", { text: "Backup " + id }),
    el("p", {}, "Instance " + m.instance + ", node " + ((m.source && m.source.node_name) || "unknown") + ", " + files.length + " files, taken " + when(m.started_at) + " to " + when(m.finished_at)),
    dbs.length ? table(["Database", { text: "Documents", num: true }, { text: "Deleted", num: true }], dbs.map(([name, st]) =>
      el("tr", {}, el("td", { text: name }), el("td", { class: "num", text: st.doc_count }), el("td", { class: "num", text: st.doc_del_count }))), "CouchDB statistics") : null,
    el("details", {}, el("summary", { text: files.length + " files" }),
      el("ul", {}, files.slice(0, 500).map(f => el("li", { class: "mono", text: f.path + " (" + bytes(f.size) + ")" }))))));
  box.querySelector("h3").focus?.();
}

async function verify(tenant, id) {
  try {
    const job = await api("POST", "/v1/backups/" + id + "/verify" + tenantQuery(tenant), {});
    say("Verify started: job " + job.id);
  } catch (e) { say("Verify not started: " + e.message); }
}

async function remove(tenant, id) {
  try {
    const job = await api("DELETE", "/v1/backups/" + id + tenantQuery(tenant));
    say("Delete started: job " + job.id);
    location.hash = "#/jobs";
  } catch (e) { say("Not deleted: " + e.message); }
}

async function restoreForm(box, tenant, instance, row) {
  let inst = null;
  try { inst = await api("GET", "/v1/instances/" + encodeURIComponent(instance) + tenantQuery(tenant)); } catch (_) { inst = null; }
  const s = row;
  const target = el("input", { id: "restore-target", required: true, placeholder: me.admin ? "/srv/restores/orders" : "orders-copy" });
  const inPlace = el("input", { id: "restore-in-place", type: "checkbox", disabled: !inst });
  const force = el("input", { id: "restore-force", type: "checkbox" });
  const review = el("div", { id: "restore-review" });
  const form = el("form", { class: "panel", id: "restore-form", "aria-label": "restore " + row.backup_id },
    el("h3", { text: "Restore " + row.backup_id }),
    el("label", { for: "restore-target", text: me.admin ? "Target directory (absolute path)" : "Target directory (a name under your restore root)" }), target,
    el("div", {}, el("label", { class: "inline", for: "restore-in-place" }, inPlace, "Into the instance itself (in place)" + (inst ? "" : ": not registered"))),
    el("div", {}, el("label", { class: "inline", for: "restore-force" }, force, "Replace what the target holds (force)")),
    el("div", { class: "actions" }, el("button", { type: "submit", id: "restore-review-button", text: "Review" })), review);
  inPlace.addEventListener("change", () => { target.disabled = inPlace.checked; target.required = !inPlace.checked; });
  form.addEventListener("submit", ev => {
    ev.preventDefault();
    const where = inPlace.checked ? "the instance's own data directory" + (inst ? " (" + inst.database_dir + ")" : "") : target.value;
    const steps = [
      "Backup " + row.backup_id + " (" + (s.kind || "full") + ", " + (s.files || "?") + " files, " + bytes(s.bytes) + ") of " + tenant + "/" + instance,
      "into " + where + (force.checked ? ", replacing what is there" : ", which must be empty"),
      s.node_name
        ? "node check: the backup was taken on node " + s.node_name + "; a target CouchDB that runs under another node name is refused (README, Restore)"
        : "node check: the backup records no node name, so there is none to make",
    ];
    if (inPlace.checked && inst) {
      steps.push("hooks: stop with " + (inst.stop_command ? JSON.stringify(inst.stop_command) : "no stop command") + ", start with " + (inst.start_command ? JSON.stringify(inst.start_command) : "no start command"));
      steps.push("then the post-restore check of every database; a failed check rolls back");
    } else {
      steps.push("hooks: none (CouchDB is not stopped or started)");
    }
    review.replaceChildren(el("div", { class: "review", role: "region", "aria-label": "what will happen" },
      el("strong", { text: "What will happen" }), el("ul", {}, steps.map(t => el("li", { text: t }))),
      el("div", { class: "actions" },
        el("button", { type: "button", class: "primary", id: "restore-confirm", onclick: () => startRestore(tenant, instance, row.backup_id, inPlace.checked ? null : target.value, force.checked), text: "Confirm restore" }),
        el("button", { type: "button", onclick: () => review.replaceChildren(), text: "Cancel" }))));
    review.querySelector("#restore-confirm").focus();
  });
  box.replaceChildren(form);
  target.focus();
}

async function startRestore(tenant, instance, id, target, force) {
  const body = { backup_id: id, instance, force };
  if (target === null) body.in_place = true; else body.target = target;
  try {
    const job = await api("POST", "/v1/restores" + tenantQuery(tenant), body);
    say("Restore started: job " + job.id);
    location.hash = "#/jobs";
  } catch (e) { say("Restore not started: " + e.message); }
}

async function schedules(root) {
  const list = await api("GET", "/v1/schedules");
  const shown = await Promise.all(list.map(s => api("GET", "/v1/schedules/" + s.id).catch(() => s)));
  const form = scheduleForm(root, null);
  root.replaceChildren(el("h2", { text: "Schedules" }),
    shown.length ? table(["Name", "Instance", "Cron", "Next run (its time zone)", "State", ""], shown.map(s => el("tr", { "data-schedule": s.name },
      el("td", { text: (me.admin ? s.tenant + "/" : "") + s.name }), el("td", { text: s.instance }),
      el("td", { class: "mono", text: s.cron + " " + s.tz }),
      el("td", { text: s.paused ? "paused" : when(s.next_run, s.tz) }),
      el("td", { text: s.paused ? "paused" : "active" }),
      el("td", { class: "actions" },
        el("button", { type: "button", onclick: () => api("POST", "/v1/schedules/" + s.id + (s.paused ? "/resume" : "/pause"), {}).then(() => schedules(root)), text: s.paused ? "Resume" : "Pause" }),
        el("button", { type: "button", onclick: () => { root.replaceChild(scheduleForm(root, s), root.querySelector("#schedule-form")); }, text: "Edit" }),
        el("button", { type: "button", class: "danger", onclick: confirmThen("Delete schedule " + s.name + "?", () => api("DELETE", "/v1/schedules/" + s.id).then(() => schedules(root))), text: "Delete" })))), "schedules")
      : el("p", { class: "muted", text: "No schedules yet." }),
    form);
}

function scheduleForm(root, existing) {
  const field = (id, label, value, attrs) => [el("label", { for: id, text: label }), el("input", Object.assign({ id, value: value || "" }, attrs || {}))];
  const preview = el("div", { id: "cron-preview", "aria-live": "polite" });
  const form = el("form", { class: "panel", id: "schedule-form", "aria-label": existing ? "edit schedule" : "add a schedule" },
    el("h3", { text: existing ? "Edit schedule " + existing.name : "Add a schedule" }),
    field("schedule-name", "Name", existing && existing.name, { required: true, readonly: !!existing }),
    me.admin ? field("schedule-tenant", "Tenant", existing ? existing.tenant : "default", { required: true, readonly: !!existing }) : null,
    field("schedule-instance", "Instance", existing && existing.instance, { required: true }),
    field("schedule-cron", "Cron expression (minute hour day-of-month month day-of-week, or @daily)", existing ? existing.cron : "30 2 * * *", { required: true, class: "mono" }),
    field("schedule-tz", "Time zone (IANA)", existing ? existing.tz : Intl.DateTimeFormat().resolvedOptions().timeZone || "UTC", { required: true }),
    field("schedule-policies", "Policies (comma-separated, optional)", existing && (existing.policies || []).join(", ")),
    preview,
    el("div", { class: "actions" }, el("button", { type: "submit", class: "primary", id: "schedule-save", text: existing ? "Save changes" : "Add schedule" })),
    el("p", { class: "error", role: "alert", id: "schedule-error" }));
  const val = id => form.querySelector("#" + id).value.trim();
  let pending;
  const explain = () => {
    clearTimeout(pending);
    pending = setTimeout(async () => {
      try {
        const p = await api("POST", "/v1/schedules/preview", { cron: val("schedule-cron"), tz: val("schedule-tz") });
        preview.replaceChildren(el("p", { id: "cron-words" }, el("strong", { text: p.description })),
          el("p", { class: "muted", text: "Next five runs:" }),
          el("ol", { id: "cron-next" }, p.next_runs.map(t => el("li", { text: when(t, p.tz) }))));
      } catch (e) { preview.replaceChildren(el("p", { class: "error", id: "cron-words", text: e.message })); }
    }, 250);
  };
  form.querySelector("#schedule-cron").addEventListener("input", explain);
  form.querySelector("#schedule-tz").addEventListener("input", explain);
  explain();
  form.addEventListener("submit", async ev => {
    ev.preventDefault();
    const spec = Object.assign({}, existing ? specOf(existing) : {}, {
      name: val("schedule-name"), instance: val("schedule-instance"), cron: val("schedule-cron"), tz: val("schedule-tz"),
      tenant: me.admin ? val("schedule-tenant") : undefined,
      policies: val("schedule-policies") ? val("schedule-policies").split(",").map(x => x.trim()).filter(Boolean) : [],
    });
    try {
      if (existing) await api("PUT", "/v1/schedules/" + existing.id, spec);
      else await api("POST", "/v1/schedules", spec);
      say("Schedule " + spec.name + " saved");
      schedules(root);
    } catch (e) { form.querySelector("#schedule-error").textContent = e.message; }
  });
  return form;
}

// A stored schedule back to the spec the API takes.
function specOf(s) {
  const skip = new Set(["couchvault_schedule", "id", "created_at", "updated_at", "anchor", "history", "next_run"]);
  return Object.fromEntries(Object.entries(s).filter(([k]) => !skip.has(k)));
}

async function policies(root, tenant) {
  // The admin acts on one tenant's policies at a time (#/policies/TENANT).
  const q = tenantQuery(tenant || "default");
  const list = await api("GET", "/v1/policies" + q);
  const o = await api("GET", "/v1/overview");
  const result = el("div", { id: "dry-run" });
  const name = el("input", { id: "policy-name", required: true });
  const file = el("input", { id: "policy-file", type: "file", accept: ".wasm", required: true });
  const upload = el("form", { class: "panel", id: "policy-upload", "aria-label": "upload a policy" },
    el("h3", { text: "Upload a policy" }), el("label", { for: "policy-name", text: "Name" }), name,
    el("label", { for: "policy-file", text: "Component (.wasm)" }), file,
    el("div", { class: "actions" }, el("button", { type: "submit", class: "primary", text: "Upload" })),
    el("p", { class: "error", role: "alert", id: "policy-error" }));
  upload.addEventListener("submit", async ev => {
    ev.preventDefault();
    try {
      const bytes = await file.files[0].arrayBuffer();
      await api("PUT", "/v1/policies/" + encodeURIComponent(name.value.trim()) + q, undefined, bytes);
      say("Policy " + name.value + " uploaded");
      policies(root, tenant);
    } catch (e) { upload.querySelector("#policy-error").textContent = e.message; }
  });
  const own = me.admin ? (tenant || "default") : me.tenant;
  const instances = [...new Set(o.instances.filter(i => i.tenant === own).map(i => i.instance))];
  const tenants = [...new Set(["default", ...o.instances.map(i => i.tenant)])];
  root.replaceChildren(el("h2", { text: "Policies" + (me.admin ? " of tenant " + own : "") }),
    me.admin ? el("div", {}, el("label", { for: "policy-tenant", text: "Tenant" }),
      el("select", { id: "policy-tenant", onchange: e => { location.hash = "#/policies/" + encodeURIComponent(e.target.value); } },
        tenants.map(t => el("option", { value: t, selected: t === own, text: t })))) : null,
    list.length ? table(["Name", "Kinds", "Added", "Dry run against", ""], list.map(p => {
      const pick = el("select", { "aria-label": "instance for the dry run of " + p.name }, instances.map(i => el("option", { value: i, text: i })));
      return el("tr", { "data-policy": p.name }, el("td", { text: p.name }), el("td", { text: p.kinds }), el("td", { text: when(p.added) }),
        el("td", {}, pick),
        el("td", { class: "actions" },
          el("button", { type: "button", onclick: () => dryRun(result, p.name, pick.value, q), text: "Dry run" }),
          el("button", { type: "button", class: "danger", onclick: confirmThen("Remove policy " + p.name + "?", () => api("DELETE", "/v1/policies/" + encodeURIComponent(p.name) + q).then(() => policies(root, tenant)).catch(e => say(e.message))), text: "Remove" })));
    }), "policies") : el("p", { class: "muted", text: "No policies uploaded." }),
    result, upload);
}

async function dryRun(box, name, instance, q) {
  try {
    const r = await api("POST", "/v1/policies/" + encodeURIComponent(name) + "/dry-run" + q, instance ? { instance } : {});
    box.replaceChildren(el("section", { class: "panel", "aria-label": "dry run of " + name },
      el("h3", { text: "Dry run of " + name + (instance ? " on " + instance : "") + " (nothing deleted)" }),
      r.retention ? table(["Backup", "Verdict", "Why"], r.retention.map(v => el("tr", {},
        el("td", { class: "mono", text: v.id }), el("td", { class: v.keep ? "state-succeeded" : "state-failed", text: v.keep ? "keep" : "delete" }),
        el("td", { text: v.reason }))), "verdicts") : null,
      r.protection ? el("pre", { class: "mono", text: JSON.stringify(r.protection, null, 2) }) : null));
  } catch (e) { box.replaceChildren(el("p", { class: "error", role: "alert", text: "Dry run failed: " + e.message })); }
}

// ---- start -----------------------------------------------------------------------------

document.getElementById("signin").addEventListener("submit", ev => {
  ev.preventDefault();
  signIn(document.getElementById("token").value.trim());
});
document.getElementById("signout").addEventListener("click", () => signOut(""));
window.addEventListener("hashchange", route);
if (sessionStorage.getItem(TOKEN_KEY)) signIn(sessionStorage.getItem(TOKEN_KEY));
else signOut("");
