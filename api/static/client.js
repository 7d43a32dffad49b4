/* copyloop storefront snippet: served copy, seen-only impressions, click and cart beacons.
 *
 *   <script src="https://API/v1/client.js" data-copyloop-key="PUBLISHABLE_KEY" async></script>
 *   <p data-copyloop-product="PRODUCT_ID">The original copy (kept if copyloop is slow or down)</p>
 *   <button data-copyloop-add-to-cart="PRODUCT_ID">Add to cart</button>
 *
 * Each marked element asks for a deferred decision (`defer=1`) and, if it comes within
 * `data-copyloop-timeout` ms (default 300), shows its text with textContent (never as HTML).
 * The decision is activated once at least half of the element has been visible for
 * `data-copyloop-dwell` ms (default 600), so copy nobody saw is never an impression. Clicks on
 * the copy (or on `data-copyloop-click="PRODUCT_ID"`) and add-to-carts are sent with
 * navigator.sendBeacon, with the decision's token. Decisions live in sessionStorage, so a later
 * page can call copyloop.track("purchase", {value: 42}). No eval, no inline styles, no
 * dependencies: a strict Content-Security-Policy needs only this script's origin in
 * script-src and connect-src. Errors never escape: the page keeps its own copy.
 */
(function () {
  "use strict";
  var script = document.currentScript || document.querySelector("script[data-copyloop-key]");
  if (!script) return;
  var key = script.getAttribute("data-copyloop-key") || "";
  var api = (script.getAttribute("data-copyloop-api") || script.src.replace(/\/v1\/client\.js.*$/, "")).replace(/\/$/, "");
  var timeoutMs = +script.getAttribute("data-copyloop-timeout") || 300;
  var dwellMs = +script.getAttribute("data-copyloop-dwell") || 600;
  var STORE = "copyloop";

  function load() {
    try { return JSON.parse(sessionStorage.getItem(STORE)) || { d: {}, cart: [] }; } catch (e) { return { d: {}, cart: [] }; }
  }
  function save(s) {
    try { sessionStorage.setItem(STORE, JSON.stringify(s)); } catch (e) { /* storage off: this page only */ }
  }
  var state = load();
  var byProduct = {};

  function url(path, extra) {
    return api + path + "?key=" + encodeURIComponent(key) + (extra || "");
  }
  function beacon(path, body) {
    var data = JSON.stringify(body);
    try {
      if (navigator.sendBeacon && navigator.sendBeacon(url(path), new Blob([data], { type: "text/plain" }))) return;
    } catch (e) { /* fall through to fetch */ }
    try {
      fetch(url(path), { method: "POST", body: data, keepalive: true, mode: "cors", headers: { "Content-Type": "text/plain" } })["catch"](function () {});
    } catch (e) { /* nothing more to try */ }
  }
  function eventId() {
    var a = new Uint8Array(12), s = "";
    (window.crypto || window.msCrypto).getRandomValues(a);
    for (var i = 0; i < a.length; i++) s += (a[i] < 16 ? "0" : "") + a[i].toString(16);
    return s;
  }
  function send(type, d, value) {
    if (!d) return;
    var e = { event_id: eventId(), decision_id: d.id, type: type, token: d.token };
    if (value != null) e.value = value;
    beacon("/v1/events", e);
  }
  function remember(el, pid, id, token) {
    var d = { id: id, token: token, product: pid };
    el.setAttribute("data-copyloop-decision", id);
    byProduct[pid] = d;
    state = load();
    state.d[id] = d;
    save(state);
    watch(el, d);
    return d;
  }

  function activate(d) {
    if (d.active) return;
    d.active = true;
    beacon("/v1/decisions/" + encodeURIComponent(d.id) + "/activate", { token: d.token });
  }
  var observer = window.IntersectionObserver ? new IntersectionObserver(function (entries) {
    entries.forEach(function (entry) {
      var d = entry.target._copyloop;
      if (!d) return;
      clearTimeout(d.timer);
      if (entry.intersectionRatio >= 0.5) {
        d.timer = setTimeout(function () { activate(d); observer.unobserve(entry.target); }, dwellMs);
      }
    });
  }, { threshold: [0, 0.5] }) : null;
  function watch(el, d) {
    el._copyloop = d;
    if (observer) observer.observe(el); else activate(d);
  }

  function context() {
    var c = "&device=" + (window.matchMedia && matchMedia("(max-width: 768px)").matches ? "mobile" : "desktop");
    var extra = script.getAttribute("data-copyloop-context");
    return extra ? c + "&" + extra.replace(/^[?&]/, "") : c;
  }
  function serve(el) {
    var pid = el.getAttribute("data-copyloop-product");
    if (!pid) return;
    var ready = el.getAttribute("data-copyloop-decision"), token = el.getAttribute("data-copyloop-token");
    if (ready && token) { remember(el, pid, ready, token); return; } // rendered by the server
    if (!window.fetch || !window.AbortController) return;
    var abort = new AbortController();
    var timer = setTimeout(function () { abort.abort(); }, timeoutMs);
    fetch(url("/v1/products/" + encodeURIComponent(pid) + "/variant", "&defer=1" + context()), { signal: abort.signal, mode: "cors" })
      .then(function (r) { return r.ok ? r.json() : null; })
      .then(function (d) {
        clearTimeout(timer);
        if (!d || typeof d.text !== "string" || !d.decision_id) return;
        el.textContent = d.text;
        remember(el, pid, d.decision_id, d.token);
      })["catch"](function () { clearTimeout(timer); /* slow or down: the original copy stays */ });
  }

  document.addEventListener("click", function (ev) {
    var t = ev.target && ev.target.closest ? ev.target : null;
    if (!t) return;
    var cart = t.closest("[data-copyloop-add-to-cart]");
    if (cart) {
      var cd = byProduct[cart.getAttribute("data-copyloop-add-to-cart")];
      if (cd) {
        send("add_to_cart", cd);
        state = load();
        if (state.cart.indexOf(cd.id) < 0) state.cart.push(cd.id);
        save(state);
      }
      return;
    }
    var hit = t.closest("[data-copyloop-click]");
    var copy = t.closest("[data-copyloop-decision]");
    var d = hit ? byProduct[hit.getAttribute("data-copyloop-click")] : copy && copy._copyloop;
    if (d) send("click", d);
  }, true);

  function track(type, opts) {
    opts = opts || {};
    state = load();
    var ids = opts.product && byProduct[opts.product] ? [byProduct[opts.product].id] : opts.decision ? [opts.decision] : state.cart;
    var n = ids.length;
    ids.forEach(function (id) {
      var d = state.d[id];
      if (d) send(type, d, opts.value != null ? opts.value / n : null);
    });
    if (type === "purchase") { state.cart = []; save(state); }
    return n;
  }

  function start() {
    var els = document.querySelectorAll("[data-copyloop-product]");
    for (var i = 0; i < els.length; i++) serve(els[i]);
  }
  window.copyloop = { track: track, decisions: function () { return load().d; } };
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start); else start();
})();
