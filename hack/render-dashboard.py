#!/usr/bin/env python3
"""Renders the chart's Grafana dashboard to a PNG without Grafana.

A real Prometheus (built from the same pinned module as promtool, hack/testbin/prometheus) scrapes
the running operator (for example `hack/demo.sh --keep`) for a while; then every panel's queries
from charts/carerix-operator/dashboards/carerix-operator.json are evaluated by that Prometheus
(query_range) and drawn with matplotlib on the dashboard's own grid. Colours and fonts are
matplotlib's, not Grafana's: it shows the data each panel would show, not Grafana's exact look.

    pip install matplotlib
    hack/render-dashboard.py --prometheus /path/to/prometheus \
        --metrics http://127.0.0.1:PORT/metrics --minutes 10 --out docs/dashboard.png

Build the prometheus binary with:
    (cd hack/testbin/prometheus && GOFLAGS=-mod=mod go build -o /tmp/prometheus \
        github.com/prometheus/prometheus/cmd/prometheus)
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from datetime import datetime, timezone

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DASHBOARD = os.path.join(ROOT, "charts/carerix-operator/dashboards/carerix-operator.json")
STEP = 5


def query_range(base, expr, start, end):
    expr = (
        expr.replace("$__rate_interval", "30s")
        .replace("$namespace", ".*")
        .replace("$connection", ".*")
    )
    params = urllib.parse.urlencode({"query": expr, "start": start, "end": end, "step": STEP})
    with urllib.request.urlopen(f"{base}/api/v1/query_range?{params}", timeout=30) as resp:
        body = json.load(resp)
    if body.get("status") != "success":
        raise RuntimeError(f"{expr}: {body}")
    return body["data"]["result"]


def legend(fmt, metric):
    out = fmt or ""
    for k, v in metric.items():
        out = out.replace("{{" + k + "}}", v)
    return out or ",".join(f"{k}={v}" for k, v in metric.items() if k != "__name__") or "value"


def render(base, start, end, out):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.gridspec import GridSpec

    dash = json.load(open(DASHBOARD))
    panels = dash["panels"]
    rows = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in panels)
    fig = plt.figure(figsize=(24, rows * 0.42), facecolor="#181b1f")
    grid = GridSpec(rows, 24, figure=fig, hspace=1.6, wspace=0.8)
    text_colour = "#d8d9da"
    fig.suptitle(
        f"{dash['title']}: live data from the demo "
        f"({datetime.fromtimestamp(start, timezone.utc):%H:%M}-{datetime.fromtimestamp(end, timezone.utc):%H:%M} UTC), "
        "queries evaluated by Prometheus, drawn with matplotlib",
        color=text_colour,
        fontsize=14,
        y=0.995,
    )
    for p in panels:
        g = p["gridPos"]
        if p["type"] == "row":
            ax = fig.add_subplot(grid[g["y"] : g["y"] + 1, 0:24])
            ax.axis("off")
            ax.text(0, 0.5, p["title"], color=text_colour, fontsize=13, fontweight="bold", va="center")
            continue
        ax = fig.add_subplot(grid[g["y"] : g["y"] + g["h"], g["x"] : g["x"] + g["w"]])
        ax.set_facecolor("#111217")
        ax.set_title(p["title"], color=text_colour, fontsize=10, loc="left")
        for spine in ax.spines.values():
            spine.set_color("#2c3235")
        ax.tick_params(colors="#8e8e8e", labelsize=7)
        series = []
        for t in p["targets"]:
            for r in query_range(base, t["expr"], start, end):
                xs = [float(v[0]) for v in r["values"]]
                ys = [float(v[1]) for v in r["values"]]
                series.append((legend(t.get("legendFormat"), r["metric"]), xs, ys))
        unit = p.get("fieldConfig", {}).get("defaults", {}).get("unit", "")
        if p["type"] == "stat":
            value = series[0][2][-1] if series else 0
            ax.axis("off")
            ax.text(0.5, 0.4, f"{value:g}", color="#73bf69", fontsize=28, ha="center", va="center", transform=ax.transAxes)
        elif p["type"] == "table":
            ax.axis("off")
            lines = sorted(
                {s[0] for s in series if s[2] and s[2][-1] == 1}
            )
            rows_text = []
            for t in p["targets"]:
                for r in query_range(base, t["expr"], end - STEP, end):
                    m = r["metric"]
                    rows_text.append(f"{m.get('namespace', '')}/{m.get('name', '')}  {m.get('type', ''):<16} {m.get('reason', '')}")
            ax.text(0.01, 0.95, "\n".join(sorted(rows_text)[:14]) or "\n".join(lines), color=text_colour, fontsize=8,
                    family="monospace", va="top", transform=ax.transAxes)
        elif p["type"] == "bargauge":
            names = [s[0] for s in series]
            values = [s[2][-1] if s[2] else 0 for s in series]
            if unit == "percentunit":
                values = [v * 100 for v in values]
            ax.barh(range(len(values)), values, color="#73bf69")
            ax.set_yticks(range(len(values)), names, fontsize=7, color=text_colour)
            if unit == "percentunit":
                ax.set_xlim(0, 100)
                ax.set_xlabel("% of Carerix's total", color="#8e8e8e", fontsize=7)
            if not values:
                ax.text(0.5, 0.5, "no entity in its initial pass", color="#8e8e8e", ha="center", transform=ax.transAxes)
        else:
            for name, xs, ys in series:
                ax.plot([datetime.fromtimestamp(x, timezone.utc) for x in xs], ys, linewidth=1.2, label=name)
            if series:
                ax.legend(fontsize=6, loc="upper left", facecolor="#181b1f", labelcolor=text_colour, framealpha=0.6)
            else:
                ax.text(0.5, 0.5, "no data", color="#8e8e8e", ha="center", transform=ax.transAxes)
            ax.xaxis.set_major_formatter(matplotlib.dates.DateFormatter("%H:%M"))
            if unit:
                ax.set_ylabel(unit, color="#8e8e8e", fontsize=7)
    fig.savefig(out, dpi=70, facecolor=fig.get_facecolor())
    print(f"wrote {out}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prometheus", required=True, help="path to a prometheus server binary")
    ap.add_argument("--metrics", required=True, help="the operator's /metrics URL")
    ap.add_argument("--minutes", type=float, default=10, help="how long to scrape before drawing")
    ap.add_argument("--port", type=int, default=19090)
    ap.add_argument("--out", default=os.path.join(ROOT, "docs/dashboard.png"))
    args = ap.parse_args()
    target = urllib.parse.urlparse(args.metrics)
    with tempfile.TemporaryDirectory() as tmp:
        config = os.path.join(tmp, "prometheus.yml")
        with open(config, "w") as f:
            f.write(
                "global: {scrape_interval: 5s, evaluation_interval: 5s}\n"
                "scrape_configs:\n"
                f"  - job_name: carerix-operator\n    honor_labels: true\n    metrics_path: {target.path}\n"
                f"    static_configs: [{{targets: ['{target.netloc}'], labels: {{pod: carerix-operator-0}}}}]\n"
            )
        prom = subprocess.Popen(
            [args.prometheus, f"--config.file={config}", f"--storage.tsdb.path={tmp}/data",
             f"--web.listen-address=127.0.0.1:{args.port}"],
            stdout=subprocess.DEVNULL, stderr=open(os.path.join(tmp, "prometheus.log"), "w"),
        )
        try:
            start = time.time()
            print(f"scraping {args.metrics} for {args.minutes} minutes", file=sys.stderr)
            time.sleep(args.minutes * 60)
            render(f"http://127.0.0.1:{args.port}", int(start) + 10, int(time.time()), args.out)
        finally:
            prom.terminate()
            prom.wait()


if __name__ == "__main__":
    main()
