#!/usr/bin/env python3
"""Draws bench/compare.sh results: python3 bench/chart.py results.json chart.png

Three panels, one bar per contender (median over rounds, every round as a dot):
GET /tiny requests/s, proxy CPU microseconds per request, upload MB/s.
For MODE=tls results the third panel is proxy CPU per new TLS connection (full and
resumed handshakes side by side) and the first two are over keep-alive HTTPS.
For MODE=encrypt results: two panels, plaintext upload MB/s and proxy CPU per MiB,
with portcullis-enc (encrypt_body = true) next to the plain forwarders.
For MODE=limits / validate / auth results: two panels, GET requests/s and proxy CPU
per request, Portcullis with the feature off and on.
"""
import json
import sys

try:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
except ImportError:
    sys.exit("chart.py: matplotlib is not installed (Debian: python3-matplotlib); no chart")

ORDER = ["direct", "nginx", "haproxy", "portcullis", "portcullis-log", "portcullis-enc", "portcullis-on", "floor", "floor-uring"]
COLORS = {"direct": "#9e9e9e", "nginx": "#2e7d32", "haproxy": "#1565c0", "portcullis": "#e65100",
          "portcullis-log": "#ff9800", "portcullis-enc": "#6a1b9a", "portcullis-on": "#ad1457", "floor": "#795548",
          "floor-uring": "#a1887f"}


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

    tls = res.get("mode") == "tls"
    enc = res.get("mode") == "encrypt"
    ab = res.get("mode") in ("limits", "validate", "auth")
    panels = [
        ("POST {:g} MiB uploads: plaintext MB/s\n(higher is better)".format(res["settings"]["upload_mib"]),
         "upload", "upload_MBps", "{:,.0f}", "MB/s (10⁶ bytes/s)"),
        ("Proxy CPU per MiB uploaded\n(user+sys µs, lower is better)", "upload", "proxy_cpu_us_per_MiB",
         "{:,.0f}", "µs / MiB"),
    ] if enc else [
        ("GET /tiny, 64-byte body: requests/s\n(higher is better)", "tiny", "rps", "{:,.0f}", "requests/s"),
        ("Proxy CPU per GET request\n(user+sys µs, lower is better)", "tiny", "proxy_cpu_us_per_req",
         "{:.2f}", "µs / request"),
    ] if ab else [
        ("GET /tiny, 64-byte body: requests/s\n(higher is better)", "tiny", "rps", "{:,.0f}", "requests/s"),
        ("Proxy CPU per GET request\n(user+sys µs, lower is better)", "tiny", "proxy_cpu_us_per_req",
         "{:.1f}", "µs / request"),
        ("POST {:g} MiB uploads: MB/s\n(higher is better)".format(res["settings"]["upload_mib"]),
         "upload", "upload_MBps", "{:,.0f}", "MB/s (10⁶ bytes/s)"),
    ] if not tls else [
        ("Keep-alive HTTPS GET /tiny: requests/s\n(higher is better; direct = plain HTTP)", "tiny", "rps",
         "{:,.0f}", "requests/s"),
        ("Proxy CPU per keep-alive HTTPS request\n(user+sys µs, lower is better)", "tiny", "proxy_cpu_us_per_req",
         "{:.1f}", "µs / request"),
    ]
    fig, axes = plt.subplots(1, len(panels) + (1 if tls else 0), figsize=(15 if not (enc or ab) else 12, 5.6))
    if tls:
        handshake_panel(axes[2], res, [c for c in names if c != "direct"], points)
    for ax, (title, test, key, fmt, ylabel) in zip(axes, panels):
        xs, labels = [], []
        for i, c in enumerate(names):
            value, hatch, label, pts = med[c].get(key), None, c, points(c, test, key)
            if ab:
                label = "{}\n{} {}".format(c, res["mode"], "on" if c == "portcullis-on" else "off")
            if tls and key == "rps" and c == "direct":
                hatch, label = "//", "direct\n(plain HTTP)"
            if enc and key == "proxy_cpu_us_per_MiB":
                value = med[c].get("upload_proxy_cpu_us_per_MiB")
                if c == "direct":  # no proxy in the path
                    labels.append(c)
                    xs.append(i)
                    ax.text(i, 0, "no proxy", ha="center", va="bottom", color="#555")
                    continue
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
        # Six or more bars: slanted names, so that long ones do not run together.
        ax.set_xticklabels(labels, rotation=30 if len(labels) > 5 else 0, ha="right" if len(labels) > 5 else "center")
        ax.set_title(title, fontsize=11)
        ax.set_ylabel(ylabel)
        ax.grid(axis="y", alpha=0.3)
        ax.set_axisbelow(True)
        ax.margins(y=0.15)
        ax.set_ylim(bottom=0)
        if key != "proxy_cpu_us_per_req":
            ax.yaxis.set_major_formatter(matplotlib.ticker.StrMethodFormatter("{x:,.0f}"))

    m, s = res["machine"], res["settings"]
    if ab:
        what = {"limits": "rate limits", "validate": "route validators", "auth": "token check + RBAC"}[res["mode"]]
        q = res.get("ab", {}).get("ratio_on_off", {}).get("rps")
        fig.suptitle("Portcullis {} off vs on — one worker, wrk on loopback{}".format(
            what, "" if q is None else " — on/off req/s {:.3f} (target ≥ {:g})".format(
                q, res.get("ab", {}).get("target_rps_ratio", 0.97))), fontsize=13)
    else:
        fig.suptitle("Portcullis vs nginx vs HAProxy — one worker each, wrk on loopback"
                     + (", TLS (ECDSA P-256 certificate)" if tls else "")
                     + (", encrypt_body uploads (pcx1 AES-256-GCM)" if enc else ""), fontsize=13)
    info = ("{} CPUs {} · {} · {} · {} s × {} rounds, {} connections{} · bars = median, dots = rounds"
            .format(m["nproc"], m["cpu_model"], m["kernel"], m["date_utc"], s["duration_s"],
                    s["rounds"], s["upload_connections"] if enc else s["connections"],
                    ", pinned" if s["pin"] else ""))
    skipped = [c for c in (["portcullis", "portcullis-on"] if ab else ORDER)
               if c not in med and (enc or c != "portcullis-enc") and (ab or c != "portcullis-on") and not c.startswith("floor")]
    if skipped:
        info += " · not measured: " + ", ".join(skipped)
    fig.text(0.5, 0.015, info, ha="center", fontsize=8.5, color="#444")
    fig.tight_layout(rect=(0, 0.04, 1, 0.95))
    fig.savefig(sys.argv[2], dpi=110)


def handshake_panel(ax, res, names, points):
    """MODE=tls: proxy CPU per new TLS connection, full and resumed handshakes."""
    med = res["medians"]
    width = 0.38
    for i, c in enumerate(names):
        for off, test, hatch in ((-width / 2, "full", None), (width / 2, "resumed", "..")):
            value = med[c].get(test + "_proxy_cpu_us_per_conn")
            x = i + off
            if value is None:
                ax.text(x, 0, "n/a", ha="center", va="bottom", color="#555")
                continue
            pts = points(c, test, "proxy_cpu_us_per_conn")
            ax.bar(x, value, color=COLORS[c], hatch=hatch, edgecolor="white" if not hatch else "#333",
                   width=width * 0.95, alpha=0.9 if test == "full" else 0.55)
            ax.scatter([x] * len(pts), pts, color="black", s=10, zorder=3)
            ax.annotate("{:.0f}".format(value), (x, max([value] + pts)), xytext=(0, 4),
                        textcoords="offset points", ha="center", va="bottom", fontsize=8.5,
                        fontweight="bold")
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=30 if len(names) > 5 else 0, ha="right" if len(names) > 5 else "center")
    ax.set_title("Proxy CPU per new TLS connection (+1 GET)\n"
                 "(µs, lower is better; solid = full, dotted = resumed)", fontsize=11)
    ax.set_ylabel("µs / connection")
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    ax.margins(y=0.15)
    ax.set_ylim(bottom=0)


if __name__ == "__main__":
    main()
