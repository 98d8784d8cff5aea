/* tunesmith dashboard, run page: live curves from metrics.jsonl over server-sent events (uPlot). */
(function () {
  "use strict";
  var el = document.getElementById("run-data");
  if (!el || typeof uPlot === "undefined") return;
  var planned = parseInt(el.dataset.planned, 10) || null;
  var records = {train: [], eval: []};
  var charts = {};
  window.tsCharts = charts;            // read by the browser tests
  window.tsRecords = records;

  // chart id -> title and series [label, record type, field, colour, smoothable]
  var SPECS = [
    {id: "loss", title: "loss", series: [["train loss", "train", "loss", "#0969da", true],
                                         ["validation loss", "eval", "val_loss", "#cf222e", false]]},
    {id: "lr", title: "learning rate", series: [["learning rate", "train", "lr", "#1a7f37", false]]},
    {id: "grad", title: "grad norm", series: [["grad norm", "train", "grad_norm", "#8250df", true]]},
    {id: "tps", title: "tokens/s", series: [["tokens/s", "train", "tokens_per_s", "#bc4c00", true]]},
    // shown once a validation carries it (train.select_on: the task metric on a validation sample)
    {id: "task", title: "validation task metric (chooses the kept checkpoint)", optional: true,
     series: [["task metric", "eval", "task_metric", "#9a6700", false]]}
  ];
  var logBox = document.getElementById("log-scale");
  var smoothBox = document.getElementById("smooth");
  var smoothWeight = document.getElementById("smooth-weight");

  function num(v) { return typeof v === "number" && isFinite(v); }

  function ema(ys, w) {
    var out = [], last = null;
    for (var i = 0; i < ys.length; i++) {
      var y = ys[i];
      if (y === null) { out.push(null); continue; }
      last = last === null ? y : w * last + (1 - w) * y;
      out.push(last);
    }
    return out;
  }

  function seriesData(spec) {
    // x: every step any series has; y: null where a series has no value at that step
    var byStep = {}, steps = [];
    spec.series.forEach(function (s, k) {
      records[s[1]].forEach(function (r) {
        if (!num(r.step) || !num(r[s[2]])) return;
        if (!(r.step in byStep)) { byStep[r.step] = []; steps.push(r.step); }
        byStep[r.step][k] = r[s[2]];
      });
    });
    steps.sort(function (a, b) { return a - b; });
    var log = logBox.checked, data = [steps];
    spec.series.forEach(function (s, k) {
      var ys = steps.map(function (x) {
        var v = byStep[x][k];
        return v === undefined || (log && v <= 0) ? null : v;
      });
      if (smoothBox.checked && s[4]) ys = ema(ys, parseFloat(smoothWeight.value) || 0);
      data.push(ys);
    });
    return data;
  }

  // small values (learning rates) keep their digits: 3e-4, not 0
  function tick(v) {
    if (v === 0 || v == null) return v === 0 ? "0" : "";
    var a = Math.abs(v);
    return a < 0.01 || a >= 1e5 ? v.toExponential(1) : String(+v.toPrecision(4));
  }

  function width(node) { return Math.max(300, node.clientWidth - 12); }

  function build(spec) {
    var node = document.getElementById("chart-" + spec.id);
    if (charts[spec.id]) charts[spec.id].destroy();
    var opts = {
      title: spec.title, width: width(node), height: 220,
      scales: {x: {time: false}, y: {distr: logBox.checked ? 3 : 1}},
      axes: [{label: "step"}, {size: 60, values: function (u, ticks) { return ticks.map(tick); }}],
      series: [{label: "step"}].concat(spec.series.map(function (s) {
        return {label: s[0], stroke: s[3], width: s[1] === "eval" ? 2 : 1.5, spanGaps: true,
                points: {show: s[1] === "eval"}};
      }))
    };
    charts[spec.id] = new uPlot(opts, seriesData(spec), node);
  }

  function fmtDuration(s) {
    s = Math.round(s);
    var h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), sec = s % 60;
    return h ? h + "h" + (m < 10 ? "0" : "") + m + "m" : (m ? m + "m" + (sec < 10 ? "0" : "") + sec + "s" : sec + "s");
  }

  function progress() {
    var train = records.train, text = document.getElementById("progress-text");
    var bar = document.getElementById("progress-bar");
    if (!train.length) { text.textContent = "no training steps yet"; return; }
    var step = train[train.length - 1].step;
    if (!planned) { text.textContent = "step " + step; return; }
    var frac = Math.min(1, step / planned);
    bar.style.width = (100 * frac).toFixed(1) + "%";
    var recent = train.slice(-20).filter(function (r) { return num(r.tokens) && num(r.tokens_per_s) && r.tokens_per_s > 0; });
    var per = recent.length ? recent.reduce(function (a, r) { return a + r.tokens / r.tokens_per_s; }, 0) / recent.length : null;
    var eta = step >= planned ? "done" : (per ? "ETA " + fmtDuration((planned - step) * per) : "");
    text.textContent = "step " + step + " / " + planned + " (" + Math.round(100 * frac) + "%)" + (eta ? " · " + eta : "");
  }

  var pending = false;
  function update() {
    pending = false;
    SPECS.forEach(function (spec) {
      var data = seriesData(spec);
      if (spec.optional) {
        var node = document.getElementById("chart-" + spec.id), shown = data[0].length > 0;
        if (node.hidden === shown) {
          node.hidden = !shown;
          if (shown) { build(spec); }
        }
      }
      charts[spec.id].setData(data);
    });
    progress();
    document.getElementById("point-count").textContent =
      records.train.length + " training and " + records.eval.length + " validation records";
  }
  function schedule() { if (!pending) { pending = true; window.requestAnimationFrame(update); } }

  SPECS.forEach(build);
  [logBox].forEach(function (b) { b.addEventListener("change", function () { SPECS.forEach(build); update(); }); });
  smoothBox.addEventListener("change", update);
  smoothWeight.addEventListener("input", function () { if (smoothBox.checked) update(); });
  window.addEventListener("resize", function () {
    SPECS.forEach(function (spec) {
      var node = document.getElementById("chart-" + spec.id);
      charts[spec.id].setSize({width: width(node), height: 220});
    });
  });

  var source = new EventSource(el.dataset.stream);
  window.tsSource = source;
  source.addEventListener("records", function (ev) {
    JSON.parse(ev.data).forEach(function (r) {
      if (r.type === "train" || r.type === "eval") records[r.type].push(r);
    });
    schedule();
  });
  source.addEventListener("reset", function () {
    records.train.length = 0;
    records.eval.length = 0;
    schedule();
  });
  window.addEventListener("pagehide", function () { source.close(); });
  progress();
})();
