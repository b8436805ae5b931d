// Interactive plots of the report (plotly.js, served by this app): drawn from the API's own JSON tables.
//
// The page names its tables, the activations' colours (app/results/colours.py), the chance level and the
// accuracy axis rule in <script id="report-charts" type="application/json">. Each <figure data-chart=KIND>
// gets a plotly chart in place of its static image (kept for pages without JavaScript, and when a table
// cannot be read); a drawn figure has data-drawn="yes", one that failed data-drawn="failed".
(function () {
  "use strict";
  const source = document.getElementById("report-charts");
  if (!source || typeof Plotly === "undefined") {
    return;
  }
  const config = JSON.parse(source.textContent);
  const BAND_OPACITY = 0.2;
  const PLOT_CONFIG = { responsive: true, displaylogo: false, modeBarButtonsToRemove: ["sendDataToCloud"] };
  const LEGEND = { x: 1.02, xanchor: "left", y: 1, yanchor: "top", tracegroupgap: 2 };

  // A page opened as http://user:key@host/... has that userinfo in its base URL, and fetch() refuses a URL
  // with credentials: resolve against the origin (which has none); the browser adds the page's credentials.
  function table(path) {
    return fetch(new URL(path, window.location.origin), { credentials: "same-origin" }).then((response) => {
      if (!response.ok) {
        throw new Error(`GET ${path}: ${response.status}`);
      }
      return response.json();
    });
  }

  function colour(label) {
    return config.colours[label] || "#555555";
  }

  function translucent(hex, opacity) {
    const value = parseInt(hex.slice(1), 16);
    return `rgba(${(value >> 16) & 255}, ${(value >> 8) & 255}, ${value & 255}, ${opacity})`;
  }

  // Labels in the spec's order, each with its rows.
  function byActivation(rows) {
    const groups = new Map();
    rows
      .slice()
      .sort((a, b) => a.activation_index - b.activation_index)
      .forEach((row) => {
        if (!groups.has(row.activation)) {
          groups.set(row.activation, []);
        }
        groups.get(row.activation).push(row);
      });
    return groups;
  }

  // A closed band from low to high along x, drawn under its line and left out of the legend and hover.
  function band(xs, lows, highs, label, axes) {
    return {
      x: xs.concat(xs.slice().reverse()),
      y: highs.concat(lows.slice().reverse()),
      fill: "toself",
      fillcolor: translucent(colour(label), BAND_OPACITY),
      line: { width: 0 },
      hoverinfo: "skip",
      showlegend: false,
      legendgroup: label,
      name: `${label} band`,
      xaxis: axes[0],
      yaxis: axes[1],
    };
  }

  function controls(figure) {
    let bar = figure.querySelector(".chart-controls");
    if (!bar) {
      bar = document.createElement("div");
      bar.className = "chart-controls";
      bar.style.cssText = "display: flex; flex-wrap: wrap; gap: 0.4rem 1.2rem; align-items: center; font-size: 0.88rem;";
      figure.insertBefore(bar, figure.querySelector(".chart"));
    }
    return bar;
  }

  function logSwitch(figure, text, checked, onChange) {
    const label = document.createElement("label");
    const box = document.createElement("input");
    box.type = "checkbox";
    box.className = "log-scale";
    box.checked = checked;
    box.addEventListener("change", () => onChange(box.checked));
    label.append(box, ` ${text}`);
    controls(figure).append(label);
    return box;
  }

  function choice(figure, name, options, selected, onChange) {
    const label = document.createElement("label");
    const select = document.createElement("select");
    select.name = name;
    options.forEach(([value, text]) => {
      const option = document.createElement("option");
      option.value = String(value);
      option.textContent = text;
      option.selected = String(value) === String(selected);
      select.append(option);
    });
    select.addEventListener("change", () => onChange(select.value));
    label.append(`${name} `, select);
    controls(figure).append(label);
    return select;
  }

  // Accuracy axes span at least chance .. chance + span x (1 - chance) and the best value: noise stays flat.
  function accuracyRange(values) {
    const chance = config.chance;
    const finite = values.filter((value) => Number.isFinite(value));
    const low = Math.min(chance, ...finite);
    const high = Math.max(chance + config.accuracy_min_span * (1 - chance), ...finite);
    const pad = 0.03 * (high - low);
    return [Math.max(0, low - pad), Math.min(1, high) + pad];
  }

  const CURVE_PANELS = [
    ["train_loss", "x", "y"],
    ["test_loss", "x2", "y2"],
    ["train_accuracy", "x3", "y3"],
    ["test_accuracy", "x4", "y4"],
  ];

  function learningCurves(figure, chart) {
    return table(config.tables.learning_curves).then((rows) => {
      const traces = [];
      const layout = {
        grid: { rows: 2, columns: 2, pattern: "independent" },
        height: 640,
        margin: { t: 60, r: 10 },
        legend: LEGEND,
        hovermode: "closest",
        annotations: [],
      };
      CURVE_PANELS.forEach(([metric, xAxis, yAxis], position) => {
        const suffix = position === 0 ? "" : String(position + 1);
        const ofMetric = rows.filter((row) => row.metric === metric);
        byActivation(ofMetric).forEach((curve, label) => {
          const xs = curve.map((row) => row.epoch);
          const withBand = curve.filter((row) => row.ci_low !== null && row.ci_high !== null);
          if (withBand.length) {
            traces.push(
              band(
                withBand.map((row) => row.epoch),
                withBand.map((row) => row.ci_low),
                withBand.map((row) => row.ci_high),
                label,
                [xAxis, yAxis],
              ),
            );
          }
          traces.push({
            x: xs,
            y: curve.map((row) => row.mean),
            customdata: curve.map((row) => [row.ci_low, row.ci_high, row.n]),
            hovertemplate: `${label}<br>${metric} %{y:.4g} at epoch %{x}<br>95% band %{customdata[0]:.4g} .. %{customdata[1]:.4g}, n %{customdata[2]}<extra></extra>`,
            mode: "lines+markers",
            marker: { size: 4 },
            line: { color: colour(label), width: 2 },
            name: label,
            legendgroup: label,
            showlegend: position === 0,
            xaxis: xAxis,
            yaxis: yAxis,
          });
        });
        const accuracy = metric.endsWith("accuracy");
        if (accuracy && config.chance !== null && ofMetric.length) {
          const epochs = ofMetric.map((row) => row.epoch);
          traces.push({
            x: [Math.min(...epochs), Math.max(...epochs)],
            y: [config.chance, config.chance],
            mode: "lines",
            line: { color: "#595959", dash: "dot", width: 1.5 },
            name: "chance",
            legendgroup: "chance",
            showlegend: position === 2,
            hovertemplate: `chance %{y:.3g}<extra></extra>`,
            xaxis: xAxis,
            yaxis: yAxis,
          });
        }
        layout[`xaxis${suffix}`] = { title: { text: "epoch" }, dtick: null, tickformat: "d" };
        layout[`yaxis${suffix}`] = { title: { text: metric.replace("_", " ") }, type: "linear" };
        if (accuracy && config.chance !== null) {
          const values = ofMetric.flatMap((row) => [row.mean, row.ci_low, row.ci_high]);
          layout[`yaxis${suffix}`].range = accuracyRange(values);
        }
        layout.annotations.push({
          text: `<b>${metric.replace("_", " ")}</b>`,
          xref: `${xAxis} domain`,
          yref: `${yAxis} domain`,
          x: 0.5,
          y: 1.08,
          showarrow: false,
        });
      });
      logSwitch(figure, "log scale (loss)", false, (log) =>
        Plotly.relayout(chart, { "yaxis.type": log ? "log" : "linear", "yaxis2.type": log ? "log" : "linear" }),
      );
      return Plotly.newPlot(chart, traces, layout, PLOT_CONFIG);
    });
  }

  function gradientHeatmap(figure, chart) {
    return table(config.tables.gradient_heatmap).then((rows) => {
      const groups = byActivation(rows);
      const labels = Array.from(groups.keys());
      const columns = Math.max(1, Math.min(4, labels.length));
      const gridRows = Math.max(1, Math.ceil(labels.length / columns));
      const depth = new Set(rows.map((row) => row.layer)).size;
      const values = rows.map((row) => row.log10_grad_norm);
      const layout = {
        grid: { rows: gridRows, columns: columns, pattern: "independent", ygap: 0.35 },
        height: Math.max(280, 40 + gridRows * (110 + 9 * depth)),
        margin: { t: 60, r: 10 },
        coloraxis: {
          colorscale: "Viridis",
          cmin: Math.min(...values),
          cmax: Math.max(...values),
          colorbar: { title: { text: "log10 gradient norm", side: "right" } },
        },
        annotations: [],
      };
      const traces = labels.map((label, position) => {
        const cells = groups.get(label);
        const epochs = Array.from(new Set(cells.map((row) => row.epoch))).sort((a, b) => a - b);
        const layers = Array.from(new Set(cells.map((row) => row.layer))).sort((a, b) => a - b);
        const z = layers.map(() => epochs.map(() => null));
        const names = layers.map(() => "");
        cells.forEach((row) => {
          z[layers.indexOf(row.layer)][epochs.indexOf(row.epoch)] = row.log10_grad_norm;
          names[layers.indexOf(row.layer)] = row.layer_name;
        });
        const suffix = position === 0 ? "" : String(position + 1);
        layout[`xaxis${suffix}`] = { title: { text: "epoch" }, tickformat: "d" };
        layout[`yaxis${suffix}`] = { title: { text: position % columns === 0 ? "layer" : "" }, tickformat: "d" };
        layout.annotations.push({
          text: `<b>${label}</b>`,
          font: { color: colour(label) },
          xref: `x${suffix} domain`,
          yref: `y${suffix} domain`,
          x: 0.5,
          y: 1.0,
          yanchor: "bottom",
          showarrow: false,
        });
        return {
          type: "heatmap",
          name: label,
          x: epochs,
          y: layers,
          z: z,
          customdata: layers.map((layer, index) => epochs.map(() => names[index])),
          coloraxis: "coloraxis",
          hovertemplate: `${label}<br>layer %{y} (%{customdata})<br>epoch %{x}<br>log10 gradient norm %{z:.2f}<extra></extra>`,
          xaxis: `x${suffix}`,
          yaxis: `y${suffix}`,
        };
      });
      return Plotly.newPlot(chart, traces, layout, PLOT_CONFIG);
    });
  }

  function layerProfile(figure, chart) {
    const state = {
      metric: "grad_norm",
      epoch: config.epochs.length ? config.epochs[config.epochs.length - 1] : null,
      log: true,
    };
    const draw = () => {
      const query = new URLSearchParams({ view: "profile", metric: state.metric, format: "json" });
      if (state.epoch !== null) {
        query.set("epoch", String(state.epoch));
      }
      // The figure's SVG and PNG links give the static plot of the same metric and epoch.
      const shown = new URLSearchParams({ metric: state.metric });
      if (state.epoch !== null) {
        shown.set("epoch", String(state.epoch));
      }
      figure.querySelectorAll("figcaption a").forEach((link) => {
        const target = new URL(link.getAttribute("href"), window.location.origin);
        link.setAttribute("href", `${target.pathname}?${shown}`);
      });
      return table(`${config.tables.gradient_flow}?${query}`).then((rows) => {
        const traces = [];
        byActivation(rows).forEach((curve, label) => {
          const xs = curve.map((row) => row.layer);
          traces.push(band(xs, curve.map((row) => row.seed_min), curve.map((row) => row.seed_max), label, ["x", "y"]));
          traces.push({
            x: xs,
            y: curve.map((row) => row.mean),
            customdata: curve.map((row) => [row.layer_name, row.seed_min, row.seed_max, row.n]),
            hovertemplate: `${label}<br>layer %{x} (%{customdata[0]})<br>${state.metric} %{y:.4g}<br>seeds %{customdata[1]:.4g} .. %{customdata[2]:.4g}, n %{customdata[3]}<extra></extra>`,
            mode: "lines+markers",
            marker: { size: 5 },
            line: { color: colour(label), width: 2 },
            name: label,
            legendgroup: label,
          });
        });
        const fraction = state.metric !== "grad_norm";
        const layout = {
          height: 440,
          margin: { t: 30, r: 10 },
          legend: LEGEND,
          hovermode: "closest",
          xaxis: { title: { text: "layer (1 = nearest the input)" }, tickformat: "d" },
          yaxis: {
            title: { text: `${config.profile_metrics[state.metric]} (band: seed range)` },
            type: state.log && !fraction ? "log" : "linear",
            range: fraction ? [-0.02, 1.02] : undefined,
          },
        };
        return Plotly.react(chart, traces, layout, PLOT_CONFIG);
      });
    };
    choice(figure, "metric", Object.entries(config.profile_metrics), state.metric, (value) => {
      state.metric = value;
      draw();
    });
    choice(
      figure,
      "epoch",
      config.epochs.map((epoch) => [epoch, epoch === 0 ? "0 (initialisation)" : String(epoch)]),
      state.epoch,
      (value) => {
        state.epoch = Number(value);
        draw();
      },
    );
    logSwitch(figure, "log scale", state.log, (log) => {
      state.log = log;
      draw();
    });
    return draw();
  }

  const CHARTS = {
    "learning-curves": learningCurves,
    "gradient-heatmap": gradientHeatmap,
    "layer-profile": layerProfile,
  };

  document.querySelectorAll("figure[data-chart]").forEach((figure) => {
    const draw = CHARTS[figure.dataset.chart];
    const chart = figure.querySelector(".chart");
    if (!draw || !chart) {
      return;
    }
    draw(figure, chart)
      .then(() => {
        const image = figure.querySelector("img.static-plot");
        if (image) {
          image.hidden = true;
        }
        figure.dataset.drawn = "yes";
      })
      .catch((error) => {
        chart.textContent = `The interactive plot could not be drawn (${error.message}); the static image follows.`;
        chart.className = "chart note";
        figure.dataset.drawn = "failed";
      });
  });
})();
