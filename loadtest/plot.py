"""The benchmark's PNG: added latency by rate, maximum req/s, adapter scaling (matplotlib).

Reads the JSON-ready dict of :func:`loadtest.report.repeated_to_dict` (medians are plotted; a
single repetition's dict works too); called by :mod:`loadtest.bench`. Every panel names what
each axis measures and its unit. :func:`bench_figure` builds the figure
(a plain ``Figure``, no pyplot state), :func:`plot` writes it.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from loadtest.repeats import median_of as m

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def plot(data: dict[str, Any], path: Path) -> Path:
    bench_figure(data).savefig(path, dpi=110)
    return path


def bench_figure(data: dict[str, Any]) -> Figure:
    from matplotlib.figure import Figure

    comparison = data["comparison"]
    fig = Figure(figsize=(16, 4.8))
    axes = fig.subplots(1, 3)
    ax = axes[0]
    for row_key, label in (("gateway", "gateway"), ("litellm", "LiteLLM")):
        for upstream in dict.fromkeys(r["upstream"] for r in comparison["latency"]):
            rows = [
                r
                for r in comparison["latency"]
                if r["upstream"] == upstream
                and r["mode"] == "full"
                and m(r[f"{row_key}_added_p50_ms"]) is not None
            ]
            if rows:
                ax.plot(
                    [r["rate"] for r in rows],
                    [m(r[f"{row_key}_added_p50_ms"]) for r in rows],
                    marker="o",
                    label=f"{label} p50 ({upstream})",
                )
                ax.plot(
                    [r["rate"] for r in rows],
                    [m(r[f"{row_key}_added_p99_ms"]) for r in rows],
                    marker="x",
                    linestyle="--",
                    label=f"{label} p99 ({upstream})",
                )
    ax.set(
        title="Added latency over direct (full answers)",
        xlabel="offered load (requests/s)",
        ylabel="added latency (ms)",
        yscale="symlog",
    )
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    ax = axes[1]
    rows = comparison["max_rps"]
    width = 0.25
    for i, (key, label) in enumerate(
        (("direct_rps", "direct"), ("gateway_rps", "gateway"), ("litellm_rps", "LiteLLM"))
    ):
        bars = ax.bar(
            [j + (i - 1) * width for j in range(len(rows))],
            [m(r[key]) or 0 for r in rows],
            width,
            label=label,
        )
        ax.bar_label(bars, fmt="%.0f", fontsize=7)
    ax.set_xticks(range(len(rows)), [r["upstream"] for r in rows])
    ax.set(
        title="Maximum requests/s (server under test on one core)",
        xlabel="upstream (what the servers forward to)",
        ylabel="throughput (requests/s)",
        yscale="log",
    )
    ax.legend(fontsize=8)
    ax = axes[2]
    scaling = comparison["adapter_scaling"]
    if scaling:
        counts = [r["adapters"] for r in scaling]
        ax.plot(counts, [m(r["rps"]) for r in scaling], marker="o", label="req/s")
        ax.set(
            xscale="log",
            xlabel="registered adapters (count)",
            ylabel="throughput (requests/s)",
            title="Adapter scaling (vLLM, Zipf)",
        )
        twin = ax.twinx()
        twin.plot(
            counts,
            [m(r["ttft_p50_ms"]) or 0 for r in scaling],
            marker="s",
            color="C1",
            label="TTFT p50",
        )
        twin.plot(
            counts,
            [m(r["ttft_p95_ms"]) or 0 for r in scaling],
            marker="^",
            color="C2",
            label="TTFT p95",
        )
        twin.set_ylabel("time to first token (ms)")
        twin.legend(fontsize=8, loc="upper right")
        ax.legend(fontsize=8, loc="upper left")
    else:
        ax.set_axis_off()
        ax.text(0.5, 0.5, "adapter scaling not run", ha="center", va="center")
    fig.suptitle(f"lora-gateway benchmark — {data['meta'].get('date', '')}")
    fig.tight_layout()
    return fig
