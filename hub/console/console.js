// The delivery console: every figure comes from the domain's own FHIR API, asked with the
// token the operator pastes (kept in this tab's memory only). Everything shown is set as
// text (textContent, createElement): never innerHTML, so no stored value becomes markup.
"use strict";

(function () {
  const consolePath = window.location.pathname.replace(/\/console\/.*$/, "");
  const domain = decodeURIComponent(consolePath.split("/").pop() || "");
  const base = consolePath + "/fhir";
  const MAX_SUBSCRIPTIONS = 500;
  const EVENTS_SHOWN = 10;
  let token = "";

  const $ = (id) => document.getElementById(id);

  // --- small helpers --------------------------------------------------------------------

  function element(tag, text, className) {
    const node = document.createElement(tag);
    if (text !== undefined && text !== null) node.textContent = String(text);
    if (className) node.className = className;
    return node;
  }

  function say(text, isError) {
    const message = $("message");
    message.textContent = text;
    message.className = isError ? "error" : "";
  }

  function parameter(parameters, name) {
    return (parameters.parameter || []).find((p) => p.name === name);
  }

  function value(item) {
    if (!item) return undefined;
    for (const key of Object.keys(item)) {
      if (key.startsWith("value")) return item[key];
    }
    return undefined;
  }

  function when(instant) {
    if (!instant) return "–";
    const moment = new Date(instant);
    if (Number.isNaN(moment.getTime())) return String(instant);
    return moment.toISOString().replace("T", " ").replace(/\.\d+Z$/, " UTC");
  }

  function duration(milliseconds) {
    const seconds = Math.max(0, Math.round(milliseconds / 1000));
    if (seconds < 60) return seconds + " s";
    const minutes = Math.floor(seconds / 60);
    if (minutes < 60) return minutes + " min " + (seconds % 60) + " s";
    const hours = Math.floor(minutes / 60);
    if (hours < 48) return hours + " h " + (minutes % 60) + " min";
    return Math.floor(hours / 24) + " days";
  }

  function relative(instant) {
    if (!instant) return "–";
    const difference = new Date(instant).getTime() - Date.now();
    return difference <= 0 ? "due now" : "in " + duration(difference);
  }

  // The hub's paging links carry its public URL; the page asks its own origin only.
  function local(url) {
    const parsed = new URL(url, window.location.href);
    return parsed.pathname + parsed.search;
  }

  async function fhir(path, options) {
    const response = await fetch(path, {
      method: (options && options.method) || "GET",
      headers: { Authorization: "Bearer " + token, Accept: "application/fhir+json" },
      cache: "no-store",
      credentials: "omit",
    });
    let body = null;
    try {
      body = await response.json();
    } catch (ignored) {
      body = null;
    }
    if (!response.ok) {
      const issue = body && body.issue && body.issue[0];
      const reason = (issue && issue.diagnostics) || response.statusText;
      const error = new Error(response.status + " " + reason);
      error.status = response.status;
      throw error;
    }
    return body;
  }

  // --- reading ----------------------------------------------------------------------------

  async function subscriptions() {
    const found = [];
    let next = base + "/Subscription?_count=100";
    while (next && found.length < MAX_SUBSCRIPTIONS) {
      const bundle = await fhir(next);
      for (const entry of bundle.entry || []) {
        if (entry.resource && entry.resource.resourceType === "Subscription") {
          found.push(entry.resource);
        }
      }
      const link = (bundle.link || []).find((l) => l.relation === "next");
      next = link ? local(link.url) : null;
    }
    return found;
  }

  async function statusOf(subscription) {
    return fhir(base + "/Subscription/" + encodeURIComponent(subscription.id) + "/$status");
  }

  async function transmitEvents(subscriptionId) {
    const query = new URLSearchParams({
      type: "transmit",
      entity: "Subscription/" + subscriptionId,
      _count: String(EVENTS_SHOWN),
    });
    const bundle = await fhir(base + "/AuditEvent?" + query.toString());
    return (bundle.entry || []).map((entry) => entry.resource);
  }

  // --- showing ----------------------------------------------------------------------------

  const STATUS_CLASSES = { active: "status-active", error: "status-error", off: "status-off",
    requested: "status-requested" };

  function statusBadge(status) {
    return element("span", status || "unknown", "status " + (STATUS_CLASSES[status] || "status-other"));
  }

  function cell(row, content, className) {
    const td = element("td", null, className);
    for (const part of [].concat(content)) {
      td.append(typeof part === "string" ? document.createTextNode(part) : part);
    }
    row.append(td);
    return td;
  }

  function lastAttemptCell(state) {
    const attempt = parameter(state, "last-attempt");
    if (!attempt) return ["–"];
    const parts = {};
    for (const part of attempt.part || []) parts[part.name] = value(part);
    const outcome = parts.outcome === "success" ? "success" : "failure";
    const shown = [element("span", outcome, "outcome-" + outcome), " " + when(parts.time)];
    // The error names the HTTP status where there was one ("HTTP 503 from …").
    if (parts.error) shown.push(element("span", parts.error, "detail"));
    else if (parts["http-status"] !== undefined) shown.push(element("span", "HTTP " + parts["http-status"], "detail"));
    return shown;
  }

  function subscriptionRow(subscription, state) {
    const row = element("tr");
    row.dataset.subscription = subscription.id;
    const channel = subscription.channel || {};
    cell(row, [element("code", subscription.id), element("span", subscription.reason || "", "detail")],
      "subscription");
    cell(row, statusBadge(value(parameter(state, "status")) || subscription.status));
    cell(row, [element("span", channel.endpoint || "–"),
      element("span", subscription.criteria || "", "detail mono")]);
    const error = value(parameter(state, "error"));
    cell(row, error && error.text ? error.text : "–", "error-text");
    const pending = value(parameter(state, "pending")) || 0;
    const gaveUp = value(parameter(state, "gave-up")) || 0;
    const pendingCell = cell(row, String(pending), "number pending");
    if (gaveUp) pendingCell.append(element("span", gaveUp + " gave up", "detail"));
    cell(row, lastAttemptCell(state), "last-attempt");
    const next = value(parameter(state, "next-attempt"));
    cell(row, next ? [relative(next), element("span", when(next), "detail")] : "–", "next-attempt");
    const actions = cell(row, [], "actions");
    const events = element("button", "Attempts");
    events.type = "button";
    events.className = "events";
    events.addEventListener("click", () => toggleEvents(row, subscription.id));
    const resend = element("button", "Resend");
    resend.type = "button";
    resend.className = "resend";
    resend.addEventListener("click", () => resendNow(subscription.id, resend));
    actions.append(events, resend);
    return row;
  }

  function eventsTable(events) {
    const table = element("table");
    const head = element("tr");
    for (const title of ["Time", "Outcome", "Endpoint", "Trace id", "Description"]) {
      head.append(element("th", title));
    }
    table.append(element("thead"));
    table.tHead.append(head);
    const body = element("tbody");
    for (const event of events) {
      const row = element("tr");
      const destination = (event.agent || []).find((agent) => agent.network && agent.requestor === false);
      const trace = (event.extension || []).find((e) => /\/trace-id$/.test(e.url || ""));
      const outcome = event.outcome === "0" ? "success" : "failure";
      cell(row, when(event.recorded));
      cell(row, element("span", outcome, "outcome-" + outcome));
      cell(row, destination ? destination.network.address : "–");
      cell(row, element("code", trace ? trace.valueId : "–"));
      cell(row, event.outcomeDesc || "");
      body.append(row);
    }
    table.append(body);
    return table;
  }

  async function toggleEvents(row, subscriptionId) {
    const open = row.nextElementSibling;
    if (open && open.classList.contains("events")) {
      open.remove();
      return;
    }
    await showEvents(row, subscriptionId);
  }

  async function showEvents(row, subscriptionId) {
    const holder = element("tr", null, "events");
    holder.dataset.events = subscriptionId;
    const td = element("td");
    td.colSpan = 8;
    td.append(element("h3", "Recent attempts (transmit AuditEvents), newest first"));
    holder.append(td);
    const existing = row.nextElementSibling;
    if (existing && existing.classList.contains("events")) existing.replaceWith(holder);
    else row.after(holder);
    try {
      const events = await transmitEvents(subscriptionId);
      td.append(events.length ? eventsTable(events) : element("p", "No attempts recorded yet."));
    } catch (error) {
      td.append(element("p", "Cannot read the AuditEvents: " + error.message, "error-text"));
    }
  }

  async function resendNow(subscriptionId, button) {
    button.disabled = true;
    try {
      const answer = await fhir(base + "/Subscription/" + encodeURIComponent(subscriptionId) + "/$resend",
        { method: "POST" });
      const due = value(parameter(answer, "due-now")) || 0;
      say("Subscription/" + subscriptionId + ": " + due + " pending notification(s) made due now.");
      await refreshOne(subscriptionId);
    } catch (error) {
      say("Resend of Subscription/" + subscriptionId + " failed: " + error.message, true);
    } finally {
      button.disabled = false;
    }
  }

  // --- the whole page ---------------------------------------------------------------------

  const shown = new Map(); // subscription id → { subscription, state }

  function summarise() {
    let pending = 0;
    let oldest = null;
    for (const { state } of shown.values()) {
      pending += value(parameter(state, "pending")) || 0;
      const since = value(parameter(state, "oldest-pending"));
      if (since && (oldest === null || new Date(since) < new Date(oldest))) oldest = since;
    }
    $("pending-total").textContent = String(pending);
    $("oldest-pending").textContent = oldest ? duration(Date.now() - new Date(oldest).getTime()) : "–";
    $("subscription-count").textContent = String(shown.size);
  }

  async function refreshOne(subscriptionId) {
    const entry = shown.get(subscriptionId);
    if (!entry) return;
    entry.state = await statusOf(entry.subscription);
    const row = document.querySelector('tr[data-subscription="' + CSS.escape(subscriptionId) + '"]');
    if (row) {
      const fresh = subscriptionRow(entry.subscription, entry.state);
      const events = row.nextElementSibling;
      row.replaceWith(fresh);
      if (events && events.classList.contains("events")) await showEvents(fresh, subscriptionId);
    }
    summarise();
  }

  async function chainHead() {
    try {
      const head = await fhir(base + "/AuditEvent/$chain-head");
      $("chain-head").textContent = value(parameter(head, "head")) || "–";
    } catch (error) {
      $("chain-head").textContent = error.status === 403 ? "not readable with this token" : error.message;
    }
  }

  async function load() {
    say("Loading…");
    $("refresh").disabled = true;
    try {
      const found = await subscriptions();
      const states = [];
      for (const subscription of found) states.push(await statusOf(subscription));
      shown.clear();
      const rows = $("subscription-rows");
      rows.replaceChildren();
      found.forEach((subscription, n) => {
        shown.set(subscription.id, { subscription, state: states[n] });
        rows.append(subscriptionRow(subscription, states[n]));
      });
      summarise();
      await chainHead();
      $("summary").hidden = false;
      $("subscriptions").hidden = false;
      say(found.length ? "Loaded at " + when(new Date().toISOString()) + "." :
        "This token's application has no Subscriptions it may read.");
    } catch (error) {
      say("Cannot load: " + error.message, true);
    } finally {
      $("refresh").disabled = !token;
    }
  }

  document.addEventListener("DOMContentLoaded", () => {
    $("domain").textContent = domain;
    $("login").addEventListener("submit", (event) => {
      event.preventDefault();
      token = $("token").value.trim();
      $("token").value = "";
      if (!token) {
        say("Paste an access token first.", true);
        return;
      }
      load();
    });
    $("refresh").addEventListener("click", () => load());
  });
})();
