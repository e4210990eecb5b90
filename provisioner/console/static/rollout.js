// The live rollout page: one EventSource on the rollout's stream; each step updates its node's row.
// The browser resumes a lost stream with Last-Event-ID by itself (WHATWG HTML, server-sent events).
(function () {
  "use strict";
  var root = document.getElementById("rollout");
  if (!root || !window.EventSource) { return; }
  var SYMBOL = {done: "✔", running: "▶", pending: "○", failed: "✖", held: "⊘", skipped: "↷", halted: "■",
                interrupted: "⚠", aborted: "—", superseded: "↷"};
  var KIND = {done: "ok", running: "run", pending: "wait", failed: "bad", held: "held", skipped: "off",
              halted: "halt", interrupted: "halt", aborted: "off", superseded: "off"};
  var unfinished = root.dataset.unfinished.split(" ");
  var rows = new Map();
  root.querySelectorAll("tr[data-node]").forEach(function (tr) { rows.set(tr.dataset.node, tr); });
  var steps = document.getElementById("steps");
  var live = document.getElementById("live");
  var announce = document.getElementById("announce");
  var status = root.dataset.status;

  function badge(state, label) {  // the same markup as the _macros.html `state` macro
    var span = document.createElement("span");
    span.className = "state st-" + (KIND[state] || "wait");
    span.dataset.state = state;
    var icon = document.createElement("span");
    icon.setAttribute("aria-hidden", "true");
    icon.textContent = SYMBOL[state] || "•";
    span.appendChild(icon);
    span.appendChild(document.createTextNode(" " + (label || state)));
    return span;
  }

  function setCell(tr, cls, node) {
    var td = tr.querySelector("." + cls);
    td.textContent = "";
    if (typeof node === "string") { td.textContent = node; } else { td.appendChild(node); }
  }

  function updateRow(name, row) {
    var tr = rows.get(name);
    if (!tr || !row) { return; }
    if (tr.querySelector(".c-status .state").dataset.state !== row.status) {
      setCell(tr, "c-status", badge(row.status));
    }
    setCell(tr, "c-step", row.step || "—");
    setCell(tr, "c-error", row.error || "");
  }

  function onStep(e) {
    var s = JSON.parse(e.data);
    updateRow(s.node, s.row);
    if (s.phase !== "begin") {
      var tr = rows.get(s.node);
      if (tr) {
        var mark = {end: "✔", skip: "↷"}[s.phase] || "✖";
        tr.querySelector(".c-steps").appendChild(document.createTextNode(s.step + mark + " "));
      }
    }
    var li = document.createElement("li");
    li.textContent = s.at + " " + s.node + " " + s.step + " " + s.phase + (s.error ? ": " + s.error : "");
    steps.insertBefore(li, steps.firstChild);
    while (steps.children.length > 30) { steps.removeChild(steps.lastChild); }
  }

  function onRollout(e) {
    var r = JSON.parse(e.data);
    var counts = document.getElementById("counts");
    counts.textContent = "";
    Object.keys(r.counts).sort().forEach(function (k) {
      counts.appendChild(badge(k, r.counts[k] + " " + k));
      counts.appendChild(document.createTextNode(" "));
    });
    Object.keys(r.nodes).forEach(function (n) { updateRow(n, r.nodes[n]); });
    if (r.status !== status) {
      status = r.status;
      var st = document.getElementById("status");
      st.textContent = "";
      st.appendChild(badge(r.status, r.status.toUpperCase()));
      document.getElementById("banner").className = "banner banner-" + r.status;
      announce.textContent = "Rollout " + r.status + (r.reason ? ": " + r.reason : "");
      var decide = document.getElementById("decide");
      if (decide) { decide.hidden = !(r.status === "halted" || r.status === "interrupted"); }
    }
    document.getElementById("reason").textContent = r.reason || "";
    root.dataset.status = r.status;
  }

  var url = root.dataset.events + "?after=" + encodeURIComponent(root.dataset.after);
  var source = new EventSource(url);
  source.addEventListener("open", function () { live.textContent = "live updates: connected"; });
  source.addEventListener("step", onStep);
  source.addEventListener("rollout", onRollout);
  source.addEventListener("end", function () {
    live.textContent = "live updates: rollout finished";
    source.close();
  });
  source.addEventListener("error", function () {
    if (unfinished.indexOf(status) >= 0 && source.readyState !== EventSource.CLOSED) {
      live.textContent = "live updates: reconnecting…";
    } else if (source.readyState === EventSource.CLOSED) {
      live.textContent = "live updates: stopped (signed out?) — reload the page";
    }
  });
}());
