// Switchyard console: swaps the page's live parts in place every few seconds
// (the server renders them; nothing is drawn here) and sends the forms to the
// JSON admin API with the token typed in this tab.
"use strict";

(function () {
  const body = document.body;
  const source = body.dataset.source;
  const every = Number(body.dataset.refresh) || 3000;
  const token = document.getElementById("token");
  const message = document.getElementById("message");
  const updated = document.getElementById("updated");
  const KEY = "switchyard-admin-token";

  // The token stays in this tab (sessionStorage), never in a cookie: a
  // cross-site page cannot make the browser send it.
  if (token) {
    token.value = sessionStorage.getItem(KEY) || "";
    token.addEventListener("input", () => sessionStorage.setItem(KEY, token.value));
  }

  function say(text, ok) {
    if (!message) return;
    message.textContent = text;
    message.className = ok ? "good" : "bad";
  }

  // One refresh at a time, each after the last has ended (a slow server
  // must not pile them up), and an answer older than the newest request is
  // dropped: a change's own refresh must not be overwritten by a stale one.
  let asked = 0;
  async function refresh() {
    const mine = ++asked;
    let html;
    try {
      const r = await fetch(source, { cache: "no-store" });
      if (!r.ok) throw new Error("the server answered " + r.status);
      html = await r.text();
    } catch (e) {
      if (updated && mine === asked) updated.textContent = "Not refreshed: " + e.message + ".";
      return;
    }
    if (mine !== asked) return;
    const fresh = document.createElement("template");
    fresh.innerHTML = html;
    for (const part of fresh.content.querySelectorAll("[data-live][id]")) {
      const old = document.getElementById(part.id);
      // A part that holds the keyboard's focus waits (replacing it would
      // drop the focus), and an unchanged one stays (its alerts would be
      // announced again).
      if (!old || old.contains(document.activeElement) || old.isEqualNode(part)) continue;
      old.replaceWith(part);
    }
    if (updated) updated.textContent = "Updated " + new Date().toLocaleTimeString() + ".";
  }

  async function tick() {
    await refresh();
    setTimeout(tick, every);
  }

  // A form's fields as the admin API's JSON body.
  function bodyOf(form) {
    const get = (name) => {
      const el = form.elements.namedItem(name);
      return el && el.value.trim() !== "" ? el.value.trim() : null;
    };
    if (form.id === "traffic-form") {
      const weights = {};
      for (const el of form.querySelectorAll("input[name^='weight-']")) {
        if (el.value.trim() !== "") weights[el.name.slice(7)] = Number(el.value);
      }
      const policy = { weights };
      if (get("sticky_header")) policy.sticky_header = get("sticky_header");
      if (get("shadow_version")) {
        policy.shadow = { version: get("shadow_version"), percent: Number(get("shadow_percent") || 100) };
      }
      return policy;
    }
    if (form.id === "rollout-form") {
      const spec = { candidate: get("candidate"), interval: get("interval") };
      for (const name of ["step_weight", "max_weight", "max_error_rate", "max_p99_latency_ms", "max_drift_psi", "min_requests"]) {
        if (get(name) !== null) spec[name] = Number(get(name));
      }
      return spec;
    }
    return null;
  }

  // Delegated: a form in a live part (the abort button) is replaced on refresh.
  document.addEventListener("submit", async (event) => {
    const form = event.target;
    if (!(form instanceof HTMLFormElement) || !form.dataset.api) return;
    event.preventDefault();
    const headers = { accept: "application/json" };
    if (token && token.value.trim() !== "") headers.authorization = "Bearer " + token.value.trim();
    const payload = bodyOf(form);
    if (payload !== null) headers["content-type"] = "application/json";
    const button = form.querySelector("button[type=submit]");
    if (button) button.disabled = true;
    try {
      const r = await fetch(form.dataset.api, {
        method: form.dataset.method,
        headers,
        body: payload === null ? undefined : JSON.stringify(payload),
      });
      const text = await r.text();
      if (r.ok) {
        say(form.dataset.done + ".", true);
        await refresh();
      } else {
        let why = text;
        try { why = JSON.parse(text).error || text; } catch (_) { /* not JSON: as it came */ }
        say("Not applied: " + why, false);
      }
    } catch (e) {
      say("Not applied: the server did not answer (" + e.message + ").", false);
    } finally {
      if (button) button.disabled = false;
    }
  });

  setTimeout(tick, every);
})();
