#!/usr/bin/env python3
"""Draws bench/compare.sh results: python3 bench/chart.py results.json chart.png

Three panels, one bar per contender (median over rounds, every round as a dot):
GET /tiny requests/s, proxy CPU microseconds per request, upload MB/s.
"""
import json
import sys

try:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
except ImportError:
    sys.exit("chart.py: matplotlib is not installed (Debian: python3-matplotlib); no chart")

ORDER = ["direct", "nginx", "haproxy", "portcullis"]
COLORS = {"direct": "#9e9e9e", "nginx": "#2e7d32", "haproxy": "#1565c0", "portcullis": "#e65100"}


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    res = json.load(open(sys.argv[1]))
    med = res["medians"]
    names = [c for c in ORDER if c in med]
    if not names:
        sys.exit("chart.py: no measured contender in " + sys.argv[1])

    def points(c, test, key):
        return [r[key] for r in res["runs"]
                if r["contender"] == c and r["test"] == test and r.get(key) is not None]

    panels = [
        ("GET /tiny, 64-byte body: requests/s\n(higher is better)", "tiny", "rps", "{:,.0f}", "requests/s"),
        ("Proxy CPU per GET request\n(user+sys µs, lower is better)", "tiny", "proxy_cpu_us_per_req",
         "{:.1f}", "µs / request"),
        ("POST {:g} MiB uploads: MB/s\n(higher is better)".format(res["settings"]["upload_mib"]),
         "upload", "upload_MBps", "{:,.0f}", "MB/s (10⁶ bytes/s)"),
    ]
    fig, axes = plt.subplots(1, 3, figsize=(15, 5.6))
    for ax, (title, test, key, fmt, ylabel) in zip(axes, panels):
        xs, labels = [], []
        for i, c in enumerate(names):
            value, hatch, label, pts = med[c].get(key), None, c, points(c, test, key)
            if key == "proxy_cpu_us_per_req" and c == "direct":
                # No proxy in the path: show what the origin alone costs.
                value, hatch, label = med[c].get("origin_cpu_us_per_req"), "//", "origin\nalone"
                pts = points(c, test, "origin_cpu_us_per_req")
            labels.append(label)
            xs.append(i)
            if value is None:
                ax.text(i, 0, "n/a", ha="center", va="bottom", color="#555")
                continue
            ax.bar(i, value, color=COLORS[c], hatch=hatch, edgecolor="white" if not hatch else "#555",
                   width=0.65, alpha=0.9)
            ax.scatter([i + 0.22] * len(pts), pts, color="black", s=12, zorder=3)
            ax.annotate(fmt.format(value), (i, max([value] + pts)), xytext=(0, 5),
                        textcoords="offset points", ha="center", va="bottom", fontsize=9,
                        fontweight="bold")
        ax.set_xticks(xs)
        ax.set_xticklabels(labels)
        ax.set_title(title, fontsize=11)
        ax.set_ylabel(ylabel)
        ax.grid(axis="y", alpha=0.3)
        ax.set_axisbelow(True)
        ax.margins(y=0.15)
        ax.set_ylim(bottom=0)
        if key != "proxy_cpu_us_per_req":
            ax.yaxis.set_major_formatter(matplotlib.ticker.StrMethodFormatter("{x:,.0f}"))

    m, s = res["machine"], res["settings"]
    fig.suptitle("Portcullis vs nginx vs HAProxy — one worker each, wrk on loopback", fontsize=13)
    info = ("{} CPUs {} · {} · {} · {} s × {} rounds, {} connections{} · bars = median, dots = rounds"
            .format(m["nproc"], m["cpu_model"], m["kernel"], m["date_utc"], s["duration_s"],
                    s["rounds"], s["connections"], ", pinned" if s["pin"] else ""))
    skipped = [c for c in ORDER if c not in med]
    if skipped:
        info += " · not measured: " + ", ".join(skipped)
    fig.text(0.5, 0.015, info, ha="center", fontsize=8.5, color="#444")
    fig.tight_layout(rect=(0, 0.04, 1, 0.95))
    fig.savefig(sys.argv[2], dpi=110)


if __name__ == "__main__":
    main()
