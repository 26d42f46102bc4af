"""Summaries (median, min, max), per-run sift/competitor ratios, targets, and the tables."""

from __future__ import annotations

from bench.common import Summary

LABELS = {
    "wall_s": ("wall time", "s"),
    "wall_over_bound": ("wall time / bound", "x"),
    "source_sent_ratio": ("source sent / data", "x"),
    "master_payload_ratio": ("master chunk bytes / data", "x"),
    "source_rss_mb": ("source peak RSS", "MB"),
    "dest_rss_mb": ("destination peak RSS", "MB"),
    "cpu_s": ("CPU time, all processes", "s"),
    "edit_to_converged_s": ("edit -> all converged", "s"),
    "rehash_to_converged_s": ("rehash done -> all converged", "s"),
    "payload_per_dest_bytes": ("chunk bytes per destination", "KiB"),
    "moved_per_dest_bytes": ("wire bytes per destination", "KiB"),
    "scan_mb_s": ("master scan (whole tree)", "MB/s"),
    "chunk_file_mb_s": ("chunk_file (largest file)", "MB/s"),
}
COMPETITORS = ("rsync", "syncthing")
MAX_FLAT_GROWTH_MB = 25.0  # (f) "flat": the largest dataset may cost the master this much more


def _label(metric: str) -> tuple[str, str]:
    if metric.startswith("master_rss_mb_"):
        return f"master peak RSS, {metric.removeprefix('master_rss_mb_')}", "MB"
    return LABELS.get(metric, (metric, ""))


def summarise(raw: dict) -> dict:
    runs: dict[str, list[dict]] = raw["runs"]
    metrics: dict[str, dict[str, dict]] = {}
    for tool, tool_runs in runs.items():
        keys = dict.fromkeys(k for r in tool_runs for k in r)
        metrics[tool] = {}
        for key in keys:
            summary = Summary.of(r.get(key) for r in tool_runs)
            if summary is not None:
                metrics[tool][key] = summary.as_dict()
    ratios: dict[str, dict[str, dict]] = {}
    for key in metrics.get("sift", {}):
        for other in COMPETITORS:
            theirs = runs.get(other) or []
            pairs = [
                (mine.get(key), their.get(key))
                for mine, their in zip(runs["sift"], theirs, strict=False)
            ]
            values = [a / b for a, b in pairs if a is not None and b]
            summary = Summary.of(values)
            if summary is not None:
                ratios.setdefault(key, {})[other] = summary.as_dict()
    out = {k: v for k, v in raw.items() if k != "runs"}
    out.update(runs=runs, metrics=metrics, ratios=ratios)
    return out


def _med(summary: dict, tool: str, key: str) -> float | None:
    return summary["metrics"].get(tool, {}).get(key, {}).get("median")


def _ratio(summary: dict, key: str, other: str) -> float | None:
    return summary["ratios"].get(key, {}).get(other, {}).get("median")


def _target(what: str, value: float | None, passed: bool | None) -> dict:
    return {"what": what, "value": value, "pass": passed if value is not None else None}


def evaluate(letter: str, raw: dict, summary: dict) -> list[dict]:
    out: list[dict] = []
    if letter == "a":
        for other in COMPETITORS:
            r = _ratio(summary, "wall_s", other)
            out.append(_target(f"faster than {other} (sift/{other} wall < 1)", r, r and r < 1))
        v = _med(summary, "sift", "source_sent_ratio")
        out.append(_target("source sends <= 1.3x the data", v, v is not None and v <= 1.3))
    elif letter == "b":
        v = _med(summary, "sift", "wall_over_bound")
        out.append(_target("wall <= 1.3x data/rate", v, v is not None and v <= 1.3))
    elif letter == "c":
        v = _med(summary, "sift", "payload_per_dest_bytes")
        limit = 4 * raw["avg_chunk"]
        out.append(
            _target(
                f"chunk bytes per peer <= 4 avg chunks ({limit} B)", v, v is not None and v <= limit
            )
        )
        for tool, how in (("sift", "atomic replace"), ("sift-inplace", "update_in_place")):
            v = _med(summary, tool, "rehash_to_converged_s")
            if v is not None or tool == "sift":
                what = f"converged < 1 s after the rehash ({how})"
                out.append(_target(what, v, v is not None and v < 1.0))
    elif letter == "d":
        v = _med(summary, "sift", "wall_s")
        out.append(_target("<= 10 s", v, v is not None and v <= 10.0))
    elif letter == "e":
        v = _med(summary, "sift", "scan_mb_s")
        out.append(_target("master scan >= 1200 MB/s", v, v is not None and v >= 1200))
    elif letter == "f":
        values = {k: s["median"] for k, s in summary["metrics"]["sift"].items()}
        worst = max(values.values())
        out.append(_target("master RSS < 150 MB at every size", worst, worst < 150))
        growth = worst - min(values.values())
        out.append(
            _target(
                f"flat (grows < {MAX_FLAT_GROWTH_MB:.0f} MB)", growth, growth < MAX_FLAT_GROWTH_MB
            )
        )
    elif letter == "g":
        v = _med(summary, "sift", "source_sent_ratio")
        out.append(_target("source sends <= 1.3x the data", v, v is not None and v <= 1.3))
    return out


def _fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "KiB":
        value /= 1024
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def _cell(s: dict | None, unit: str) -> str:
    if not s:
        return "-"
    if len(s.get("runs", ())) == 1:
        return _fmt(s["median"], unit)
    return f"{_fmt(s['median'], unit)} ({_fmt(s['min'], unit)}-{_fmt(s['max'], unit)})"


def _rows(summary: dict) -> tuple[list[str], list[list[str]]]:
    tools = list(summary["metrics"])
    others = [o for o in COMPETITORS if o in tools]
    head = ["metric", *tools, *(f"sift/{o}" for o in others)]
    rows = []
    keys = dict.fromkeys(k for t in tools for k in summary["metrics"][t])
    for key in keys:
        label, unit = _label(key)
        row = [f"{label} ({unit})" if unit else label]
        row += [_cell(summary["metrics"][t].get(key), unit) for t in tools]
        row += [_cell(summary["ratios"].get(key, {}).get(o), "x") for o in others]
        rows.append(row)
    return head, rows


def render_text(scenarios: dict) -> str:
    lines = []
    for letter, summary in scenarios.items():
        lines.append(f"({letter}) {summary['title']}")
        head, rows = _rows(summary)
        widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
        for row in [head, *rows]:
            lines.append("  " + "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))
        for t in summary.get("targets", []):
            verdict = {True: "PASS", False: "FAIL", None: "n/a"}[t["pass"]]
            value = "-" if t["value"] is None else f"{t['value']:.3g}"
            lines.append(f"  target: {t['what']}: {value} {verdict}")
        lines.append("")
    return "\n".join(lines)


def render_markdown(scenarios: dict, results: dict) -> str:
    out = [
        f"Run {results['started']}, {results['machine']['cpus']} CPUs, Python "
        f"{results['machine']['python']}; median (min-max) of "
        f"{results['settings']['repeat']} run(s); ratios are per run, then summarised.",
        "",
    ]
    for letter, summary in scenarios.items():
        out.append(f"**({letter}) {summary['title']}**")
        out.append("")
        head, rows = _rows(summary)
        out.append("| " + " | ".join(head) + " |")
        out.append("|" + "---|" * len(head))
        out.extend("| " + " | ".join(r) + " |" for r in rows)
        out.append("")
        for t in summary.get("targets", []):
            verdict = {True: "pass", False: "**fail**", None: "n/a"}[t["pass"]]
            value = "-" if t["value"] is None else f"{t['value']:.3g}"
            out.append(f"- target {t['what']}: {value}, {verdict}")
        out.append("")
    return "\n".join(out)


def render_targets(scenarios: dict) -> str:
    """One table of every target: scenario, what, the measured median, pass or fail."""
    out = ["| scenario | target | measured | result |", "|---|---|---|---|"]
    for letter, summary in scenarios.items():
        for t in summary.get("targets", []):
            verdict = {True: "pass", False: "**fail**", None: "n/a"}[t["pass"]]
            value = "-" if t["value"] is None else f"{t['value']:.3g}"
            out.append(f"| ({letter}) | {t['what']} | {value} | {verdict} |")
    return "\n".join(out) + "\n"
