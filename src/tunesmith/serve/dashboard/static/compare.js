/* tunesmith dashboard, compare page: every run's training and validation loss on one uPlot chart. */
(function () {
  "use strict";
  var node = document.getElementById("chart-compare");
  var src = document.getElementById("compare-data");
  if (!node || !src || typeof uPlot === "undefined") return;
  var runs = JSON.parse(src.textContent);
  var COLORS = ["#0969da", "#cf222e", "#1a7f37", "#8250df", "#bc4c00", "#1b7c83", "#6e7781", "#bf3989"];
  var logBox = document.getElementById("log-scale");
  var charts = {};
  window.tsCharts = charts;             // read by the browser tests

  function data() {
    var byStep = {}, steps = [], n = 0, log = logBox.checked;
    runs.forEach(function (run) {
      ["train", "val"].forEach(function (kind) {
        run[kind].forEach(function (p) {
          if (!(p[0] in byStep)) { byStep[p[0]] = {}; steps.push(p[0]); }
          byStep[p[0]][n] = p[1];
        });
        n++;
      });
    });
    steps.sort(function (a, b) { return a - b; });
    var out = [steps];
    for (var k = 0; k < n; k++) {
      out.push(steps.map(function (x) {
        var v = byStep[x][k];
        return v === undefined || (log && v <= 0) ? null : v;
      }));
    }
    return out;
  }

  function build() {
    if (charts.compare) charts.compare.destroy();
    var series = [{label: "step"}];
    runs.forEach(function (run, i) {
      var c = COLORS[i % COLORS.length];
      series.push({label: run.name + " train", stroke: c, width: 1, spanGaps: true, points: {show: false}});
      series.push({label: run.name + " val", stroke: c, width: 2.5, dash: [6, 3], spanGaps: true, points: {show: true}});
    });
    charts.compare = new uPlot({
      title: "training (thin) and validation (dashed) loss", width: Math.max(400, node.clientWidth - 12), height: 320,
      scales: {x: {time: false}, y: {distr: logBox.checked ? 3 : 1}}, axes: [{label: "step"}, {size: 60}],
      series: series
    }, data(), node);
  }
  logBox.addEventListener("change", build);
  build();
})();
