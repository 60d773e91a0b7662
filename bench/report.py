"""The benchmark's report as a Markdown table: each figure beside the ceiling and the peer."""

from __future__ import annotations

from a3c.cpu import CPU_FEATURES


def table(report: dict) -> str:
    ceiling = report["ceiling"]["frames_per_second"]
    peer_fps = report["peer"].get("frames_per_second")
    rows = [("Ceiling (actor work + in-process apply, 1 core x cores)",
             f"{ceiling:,.0f} frames/s ({report['ceiling']['per_core']:,.0f} per core, "
             f"{report['ceiling'].get('conv_precision', 'float32')} convolutions)")]
    if peer_fps:
        rows.append(("Stable-Baselines3 A2C, 16 envs", f"{peer_fps:,.0f} frames/s"))

    def speed(fps: float) -> str:
        ratios = f"{fps / ceiling:.0%} of ceiling" + (f", {fps / peer_fps:.2f}x SB3 A2C" if peer_fps else "")
        return f"{fps:,.0f} frames/s ({ratios})"

    for run in report["end_to_end"]:
        rows.append((f"a3c train, {run['actors']} actor(s)", speed(run["frames_per_second"])))
    overlap = report.get("end_to_end_overlap")
    if overlap:
        rows.append(("a3c train, 2 actors, `--overlap-pushes`", f"{speed(overlap['frames_per_second'])}; waiting on "
                     f"the learner {overlap['wait_share']:.1%} of actor wall time"))
    wire = next((r for r in report["end_to_end"] if r["actors"] == 2), report["end_to_end"][0])
    latency = ", ".join(f"{k.replace('_ms', '')} {v:.1f} ms" for k, v in sorted(wire["latency_ms"].items()))
    rows += [(f"Wire ({wire['actors']} actors): time waiting on the learner",
              f"{wire['wait_share']:.1%} of actor wall time (RPCs in flight {wire['rpc_share']:.1%})"),
             ("Wire: bytes per agent step", f"{wire['bytes_per_agent_step']:,.0f} B"),
             ("Wire: RPC latency seen by actors", latency or "n/a")]
    capacity = report["learner_capacity"]
    per_core = 1000 / capacity["learner_cpu_ms_per_update"]
    rows += [(f"Learner capacity ({capacity['pushers']} synthetic pushers on the same cores)",
              f"{capacity['updates_per_second']:,.0f} updates/s = {capacity['frames_per_second_equivalent']:,.0f} "
              f"frames/s at {capacity['frames_per_update']} frames per update"),
             ("Learner CPU per update", f"{capacity['learner_cpu_ms_per_update']:.1f} ms: one core would absorb "
              f"{per_core:,.0f} updates/s = {per_core * capacity['frames_per_update']:,.0f} frames/s")]
    fronted = report.get("learner_capacity_frontends")
    if fronted:
        alone = 1000 / fronted["learner_cpu_ms_per_update"]
        rows.append((f"Learner capacity, `{' '.join(fronted['learner_args'])}` (gRPC in front processes)",
                     f"{fronted['updates_per_second']:,.0f} updates/s = "
                     f"{fronted['frames_per_second_equivalent']:,.0f} frames/s; per update the learner's own process "
                     f"{fronted['learner_cpu_ms_per_update']:.1f} ms of CPU (alone on a core it would absorb "
                     f"{alone:,.0f} updates/s = {alone * fronted['frames_per_update']:,.0f} frames/s), the fronts "
                     f"{fronted['fronts_cpu_ms_per_update']:.1f} ms"))
    def peak(kind: str, service: str) -> str:
        return f"{max(r[kind][service] for r in report['end_to_end']):,.0f} MB"

    rows += [("Peak resident memory (in brackets: its own, without shared library pages)",
              f"learner {peak('peak_rss_mb', 'learner')} ({peak('peak_private_mb', 'learner')}), "
              f"actor {peak('peak_rss_mb', 'actor')} ({peak('peak_private_mb', 'actor')})")]
    m = report["machine"]
    features = ", ".join(m.get("cpu_features", [])) or "none of " + "/".join(CPU_FEATURES)
    head = (f"Measured {report['date']} on {m['cores']} cores ({m['cpu']}; {features}), {report['env']}, defaults; "
            f"medians of repeated windows.\n\n| what | result |\n|---|---|\n")
    return head + "\n".join(f"| {a} | {b} |" for a, b in rows) + "\n"
