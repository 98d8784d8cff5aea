/* tunesmith dashboard: runs list (filter, sort, live refresh, compare selection) and job actions. */
(function () {
  "use strict";
  var csrf = (document.querySelector('meta[name="csrf-token"]') || {}).content || "";
  window.tsCsrf = csrf;

  // ---- job actions: the jobs API's cancel / pause / resume, through the dashboard (key + CSRF checked)
  // action -> the job statuses it applies to (the jobs API's rules; the run page hides the others)
  var ALLOWED = {cancel: ["validating_files", "queued", "running", "paused"], pause: ["queued", "running"],
                 resume: ["paused"]};
  function showActions(section, status) {
    section.querySelectorAll("button.job-action").forEach(function (b) {
      b.hidden = (ALLOWED[b.dataset.action] || []).indexOf(status) < 0;
    });
  }
  document.addEventListener("click", function (ev) {
    var btn = ev.target.closest ? ev.target.closest("button.job-action") : null;
    if (!btn) return;
    ev.preventDefault();
    var msg = document.getElementById("job-message");
    btn.disabled = true;
    fetch("/ui/jobs/" + encodeURIComponent(btn.dataset.job) + "/" + btn.dataset.action, {
      method: "POST", headers: {"X-CSRF-Token": csrf}, credentials: "same-origin"
    }).then(function (r) {
      return r.json().then(function (body) { return {ok: r.ok, body: body}; });
    }).then(function (res) {
      var text = res.ok ? ("job " + res.body.id + " is now " + res.body.status)
                        : ((res.body.error || {}).message || "the action failed");
      if (msg) msg.textContent = text;
      if (res.ok) {
        var st = document.getElementById("job-status");
        if (st) { st.textContent = res.body.status; st.className = "status s-" + res.body.status; }
        var section = btn.closest("section.job");
        if (section) showActions(section, res.body.status);
        if (typeof window.tsRefreshRuns === "function") window.tsRefreshRuns();
      }
    }).catch(function (e) {
      if (msg) msg.textContent = "the action failed: " + e;
    }).then(function () { btn.disabled = false; });
  });

  // ---- runs list
  var table = document.getElementById("runs");
  if (!table) return;
  var filter = document.getElementById("filter");
  var statusSel = document.getElementById("status-filter");
  var compareBtn = document.getElementById("compare-button");
  var sortCol = 9, sortDir = -1;

  function cellValue(tr, col) {
    var td = tr.cells[col];
    return td ? (td.dataset.v || "") : "";
  }
  function compare(a, b) {
    var x = cellValue(a, sortCol), y = cellValue(b, sortCol);
    var nx = parseFloat(x), ny = parseFloat(y);
    if (x === "" && y !== "") return 1;          // empty cells last, whatever the direction
    if (y === "" && x !== "") return -1;
    if (!isNaN(nx) && !isNaN(ny) && String(nx) === x.trim() && String(ny) === y.trim()) return sortDir * (nx - ny);
    return sortDir * x.localeCompare(y);
  }
  function apply() {
    var body = document.getElementById("run-rows");
    var rows = Array.prototype.slice.call(body.rows).filter(function (r) { return !r.classList.contains("empty"); });
    rows.sort(compare).forEach(function (r) { body.appendChild(r); });
    var q = (filter.value || "").toLowerCase().trim(), st = statusSel.value, shown = 0;
    rows.forEach(function (r) {
      var ok = (!q || q.split(/\s+/).every(function (w) { return (r.dataset.search || "").indexOf(w) >= 0; }))
               && (!st || r.dataset.status === st);
      r.classList.toggle("hidden", !ok);
      if (ok) shown++;
    });
    document.getElementById("shown-count").textContent = shown + " of " + rows.length + " runs";
    updateCompare();
  }
  function checked() {
    return Array.prototype.map.call(document.querySelectorAll('#run-rows input[name="run"]:checked'),
                                    function (c) { return c.value; });
  }
  function updateCompare() { compareBtn.disabled = checked().length < 2; }

  table.querySelectorAll("th[data-sort]").forEach(function (th) {
    th.addEventListener("click", function () {
      var col = parseInt(th.dataset.sort, 10);
      sortDir = col === sortCol ? -sortDir : 1;
      sortCol = col;
      table.querySelectorAll("th[data-sort]").forEach(function (h) { h.classList.remove("sorted-asc", "sorted-desc"); });
      th.classList.add(sortDir > 0 ? "sorted-asc" : "sorted-desc");
      apply();
    });
  });
  filter.addEventListener("input", apply);
  statusSel.addEventListener("change", apply);
  document.addEventListener("change", function (ev) { if (ev.target.name === "run") updateCompare(); });

  // a run started from the CLI (or a job) appears without reloading: the table bodies are fetched again
  var busy = false;
  function refresh() {
    if (busy) return;
    busy = true;
    var keep = checked();
    fetch("/ui/runs/rows", {credentials: "same-origin"}).then(function (r) {
      if (r.status === 401) { window.location = "/ui/login?next=%2Fui%2F"; return null; }
      return r.ok ? r.text() : null;
    }).then(function (html) {
      if (!html) return;
      var doc = new DOMParser().parseFromString(html, "text/html");
      ["run-rows", "job-rows"].forEach(function (id) {
        var fresh = doc.getElementById(id), cur = document.getElementById(id);
        if (fresh && cur) cur.innerHTML = fresh.innerHTML;
      });
      keep.forEach(function (id) {
        var box = document.querySelector('#run-rows input[name="run"][value="' + CSS.escape(id) + '"]');
        if (box) box.checked = true;
      });
      apply();
    }).catch(function () { /* the server restarted: try again next time */ }).then(function () { busy = false; });
  }
  window.tsRefreshRuns = refresh;
  setInterval(refresh, 3000);
  apply();
})();
