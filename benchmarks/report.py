"""Regenerate the README's benchmark tables from ``benchmarks/results/*.json``.

    python benchmarks/report.py          # rewrites the blocks between <!-- BEGIN name --> and <!-- END name -->
    python benchmarks/report.py --check  # writes nothing: names the blocks out of date with the JSON (exit 1)

Each table is generated from one JSON file, so the README never shows a number that no result file holds.
"""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"


def _load(name: str) -> dict | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def _machine_line(result: dict) -> str:
    m = result["machine"]
    gpu = f", GPU {m['gpu']}" if m.get("gpu") else ", no GPU"
    return (f"_Measured on {m['cpu']} ({m['cores']} cores, {m['torch_threads']} torch thread"
            f"{'s' if m['torch_threads'] != 1 else ''}{gpu}), "
            f"torch {m['torch']}, Python {m['python']}, commit {m['git_commit']}._")


def _num(value, spec: str) -> str:
    """``value`` formatted by ``spec``; ``-`` for a metric the run could not measure (null in the JSON)."""
    return "-" if value is None else format(value, spec)


def _command(script: str, *options: tuple) -> str:
    """``python benchmarks/SCRIPT`` with each ``(flag, value, the script's default)`` whose value differs from the
    default, so that the cited command makes the table's JSON again (a list value is written space-separated)."""
    words = [f"python benchmarks/{script}"]
    for flag, value, default in options:
        if value != default:
            words += [flag, " ".join(map(str, value)) if isinstance(value, list) else str(value)]
    return " ".join(words)


def kernels_table(result: dict) -> str:
    enc = result["hash_encoding"]
    s = enc["sizes"]
    yes = lambda ok: "yes" if ok else "**no**"  # noqa: E731
    lines = [
        f"Hash encoding, instant-ngp defaults (L={s['n_levels']}, F={s['n_features_per_level']}, "
        f"T=2^{s['log2_hashmap_size']}, N_min={s['base_resolution']}, finest 2048), {s['points']:,} points, "
        "forward + backward to the table:",
        "",
        "| measure | value | target | met |",
        "| --- | ---: | ---: | :---: |",
        f"| native C++ (points/s) | {enc['native_fwd_bwd_points_per_s']:,.0f} | | |",
        f"| PyTorch reference (points/s) | {enc['reference_fwd_bwd_points_per_s']:,.0f} | | |",
        f"| native / reference speed | {enc['speedup_vs_reference']:.1f}x | >= {enc['targets']['speedup_vs_reference']:.0f}x "
        f"| {yes(enc['met']['speedup_vs_reference'])} |",
        f"| native fwd+bwd time / gather bound ({s['gathered_rows']:,} rows) | {enc['native_over_gather_bound']:.2f}x "
        f"| <= {enc['targets']['native_over_gather_bound_at_most']:.0f}x | {yes(enc['met']['within_gather_bound'])} |",
    ]
    march = result.get("marcher")
    if march:
        lines += ["", "Ray marcher, head-shaped occupancy against uniform sampling of the box at the same step:", "",
                  "| measure | value |", "| --- | ---: |"]
        for key, value in march.get("summary", {}).items():
            lines.append(f"| {key} | {value} |")
    comp = result.get("composite")
    if comp:
        lines += ["", "Volume compositing on packed samples, forward + backward:", "", "| measure | value |",
                  "| --- | ---: |"]
        for key, value in comp.get("summary", {}).items():
            lines.append(f"| {key} | {value} |")
    heads = result.get("mlp_head")
    if heads:
        lines += ["", f"Fused MLP heads (the cpu preset's density and colour heads, {heads['sizes']['samples']:,} samples of "
                  f"{heads['sizes']['rays']:,} rays), forward + backward, against the same heads as torch ops:", "",
                  "| measure | value |", "| --- | ---: |"]
        for key, value in heads.get("summary", {}).items():
            lines.append(f"| {key} | {value} |")
    lines += ["", _machine_line(result)]
    return "\n".join(lines)


def train_targets_table(result: dict) -> str:
    t = result["targets"]
    yes = lambda ok: "yes" if ok else "**no**"  # noqa: E731
    gm, gc, p = result["generic_multiplicative"], result["generic_concat"], result["personalize"]
    d = result["data"]
    lines = [
        f"Procedural heads, {len(d['identities']) - 1} identities + 1 held out, {d['size']} px, "
        f"`{result['config']}` preset, {result['budget_seconds']:.0f} s budget per training "
        f"(`python benchmarks/train_targets.py`):",
        "",
        "| target | measured | goal | met |",
        "| --- | ---: | ---: | :---: |",
        f"| generic training: mean val PSNR | {t['generic_val_psnr_ge_30db']['value']:.2f} dB | >= 30 dB "
        f"| {yes(t['generic_val_psnr_ge_30db']['met'])} |",
        f"| `novel` PSNR, multiplicative - concat ({gm['novel']['mean_psnr']:.2f} vs {gc['novel']['mean_psnr']:.2f} dB) "
        f"| {t['novel_multiplicative_minus_concat_ge_1db']['value']:+.2f} dB | >= +1 dB "
        f"| {yes(t['novel_multiplicative_minus_concat_ge_1db']['met'])} |",
        f"| personalisation ({d['personalize_frames']} frames) reaches the val PSNR of {result['budget_seconds'] / 60:g} min "
        f"alone ({p['alone_final_val_psnr']:.2f} dB; "
        f"personalised: {max(c['val_psnr'] for c in p['curve']):.2f} dB at best) "
        f"| {'%.0f s' % p['seconds_to_match_alone'] if p['seconds_to_match_alone'] is not None else 'not reached'} "
        f"| <= 60 s | {yes(t['personalize_matches_alone_within_60s']['met'])} |",
        "",
        _machine_line(result),
    ]
    if "personalize_rerun" in result:  # the personalisation row was measured again later (--personalize-only)
        rerun = result["personalize_rerun"]["machine"]
        lines.append(f"_Personalisation row re-measured with `--personalize-only` at commit {rerun.get('git_commit')} "
                     f"({rerun.get('torch_threads')} torch threads), against the same generic and alone runs._")
    return "\n".join(lines)


def prepare_table(result: dict) -> str:
    b, s = result["best"], result["sizes"]
    yes = "yes" if result["met"] else "**no**"
    stages = ", ".join(f"{k} {v:.1f} s" for k, v in b["stage_seconds"].items())
    lines = [
        f"`fastminerf prepare` on {len(s['clips'])} real clips re-encoded to {s['input_px']} px, "
        f"{s['frames_per_clip']} frames each, written at {s['output_px']} px (`python benchmarks/prepare_speed.py`; "
        "wall time of one call, mediapipe start-up included, best of the runs):",
        "",
        "| measure | value | target | met |",
        "| --- | ---: | ---: | :---: |",
        f"| frames/s, end to end | {b['fps']:.1f} | >= {result['target_fps']:.0f} | {yes} |",
        f"| frames, seconds | {b['frames']}, {b['seconds']:.1f} s ({stages}) | | |",
        "",
        _machine_line(result) + f" mediapipe {result['machine'].get('mediapipe')}, OpenCV {result['machine'].get('opencv')}.",
    ]
    return "\n".join(lines)


def real_clips_table(result: dict) -> str:
    st, tr = result["settings"], result["training"]
    tune = st.get("finetune_seconds", 0)
    trained = (f"{tr['seconds'] / 60:.1f} min of CPU training ({tr['steps']} steps)" if not tune else
               f"{tr['seconds'] / 60:.1f} min of CPU training ({tr['steps']} steps), then each clip fine-tuned alone "
               f"for up to {tune:g} s (`--finetune-seconds {tune:g}`; {tr['seconds_with_finetunes'] / 60:.1f} min of "
               "training in all) and scored by its own fine-tuned model")
    lines = [
        f"One generic model trained on the `train` split of {len(st['clips'])} real clips (first {st['max_frames']} "
        f"frames each, {st['size']} px), `{st['config']}` preset, {trained}; evaluated on the first "
        f"{st['eval_frames']} frames of each clip's `test` split (its "
        "last frames, never trained on). Baselines on the same frames: `bg.png` alone, and the clip's mean colour "
        "(`python benchmarks/real_clips.py`). Head pose gap: the angle from the frame's head pose to the nearest "
        "pose of the clip's training frames (mean over the frames; a new view for the NeRF):",
        "",
    ]
    gaps = all("pose_gap_deg" in m for m in result["test"].values())  # results before the column have none
    # the lip-sync view (results since eval measured it): PSNR in a box around the real frame's lips, and LMD
    lips = all("mouth_psnr" in m and "lmd" in m for m in result["test"].values())
    # and the eyes (since eval measured them): PSNR in the boxes around the real frame's eyes, and the eye aspect ratios'
    # difference (blinks)
    eyes = all("eye_psnr" in m and "ear_error" in m for m in result["test"].values())

    alone = result.get("generic_only")  # a fine-tuning run: its generic phase's model on the same frames

    def row(label: str, m: dict, bold: bool = False, g: dict | None = None) -> str:
        b = "**" if bold else ""
        return (f"| {label} | {b}{m['psnr']:.2f}{b} | {b}{m['ssim']:.3f}{b} |"
                + (f" {g['psnr']:.2f} / {g['ssim']:.3f} |" if g else "")
                + (f" {_num(m['mouth_psnr'], '.2f')} | {_num(m['lmd'], '.2f')} |" if lips else "")
                + (f" {_num(m['eye_psnr'], '.2f')} | {_num(m['ear_error'], '.3f')} |" if eyes else "")
                + f" {m['bg_psnr']:.2f} | {m['mean_colour_psnr']:.2f} |" + (f" {m['pose_gap_deg']:.1f} |" if gaps else ""))

    lines += ["| clip | PSNR (dB) | SSIM |" + (" generic phase alone (dB / SSIM) |" if alone else "")
              + (" mouth-box PSNR (dB) | LMD (px) |" if lips else "")
              + (" eye-box PSNR (dB) | EAR error |" if eyes else "")
              + " bg.png alone (dB) | mean colour (dB) |" + (" head pose gap (deg) |" if gaps else ""),
              "| --- | ---: | ---: |" + (" ---: |" if alone else "") + (" ---: | ---: |" if lips else "") + (" ---: | ---: |" if eyes else "")
              + " ---: | ---: |" + (" ---: |" if gaps else "")]
    lines += [row(name, m, g=alone["test"][name] if alone else None) for name, m in result["test"].items()]
    mn = result["mean"]
    lines.append(row("**mean**", mn, bold=True, g=alone["mean"] if alone else None))
    met = "met" if mn["psnr"] >= result["target_psnr_db"] else "**not met**"
    lines += ["", f"Target >= {result['target_psnr_db']:.0f} dB mean PSNR: {met}.", "", _machine_line(result)]
    return "\n".join(lines)


def _yes(ok: bool) -> str:
    return "yes" if ok else "**no**"


def _s(seconds: float, reached: bool = True) -> str:
    return (f"{seconds:.1f} s" if seconds < 10 else f"{seconds:.0f} s") + ("" if reached else " (cap)")


def identities_table(result: dict) -> str:
    st, rows, t = result["settings"], result["rows"], result["targets"]
    pers = any("personalize_seconds" in r for r in rows)
    lines = [
        f"Procedural identities, {st['size']} px, {st['frames']} frames each, `{st['config']}` preset, every model trained "
        f"until its val PSNR reaches {st['target_psnr']:.0f} dB (generic: the mean over its identities), "
        f"`{result['mode']}` version (`fastminerf bench identities{' --full' if result['mode'] == 'full' else ''}"
        f"{' --seeds ' + ' '.join(map(str, st['seeds'])) if st.get('seeds') else ''}`). "
        "Times are training seconds (evaluation excluded); steps are reproducible, times depend on the machine's load"
        + (f". Mean ± standard deviation over {len(st['seeds'])} seeds (procedural people and model initialisation "
           f"{', '.join(map(str, st['seeds']))}); the targets are read on the means:" if st.get("seeds") else ":"),
        "",
        "| N | generic model | N single models (sum) | generic / single: time | CPU time | steps "
        "| novel PSNR: generic | novel PSNR: single | generic - single" + (" | add identity N+1 |" if pers else " |"),
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |" + (" ---: |" if pers else ""),
    ]

    def pm(r, key, fmt):  # a mean over seeds shows its spread
        return format(r[key], fmt) + (f" ± {r[key + '_std']:.2f}" if key + "_std" in r else "")

    for r in rows:
        line = (f"| {r['n']} | {_s(r['generic_seconds'], r['generic_reached'])}, {r['generic_steps']:.0f} steps "
                f"| {_s(r['single_seconds_total'], r['single_reached_all'])}, {r['single_steps_total']:.0f} steps "
                f"| {pm(r, 'ratio', '.2f')} | {r['ratio_cpu']:.2f} | {r['ratio_steps']:.2f} "
                f"| {pm(r, 'novel_psnr', '.2f')} dB | {pm(r, 'single_novel_psnr', '.2f')} dB "
                f"| {pm(r, 'novel_gain_vs_single', '+.2f')} dB |")
        if pers:
            line += (f" {_s(r['personalize_seconds'], r['personalize_reached'])}, {r['personalize_steps']:.0f} steps |"
                     if "personalize_seconds" in r else " |")
        lines.append(line)
    names = {"generic_le_25pct_of_singles_at_8": "at N=8 the generic model takes <= 25% of the summed single time",
             "ratio_falls_with_n": "the generic / single time ratio falls with N (N >= 2)",
             "novel_psnr_grows_1_to_8": "novel-expression PSNR at the target (each model's people) grows with N from 1 to 8",
             "novel_gain_vs_single_grows_1_to_8": "novel PSNR over the single models of the same people grows with N "
                                                  "from 1 to 8"}
    lines += ["", "| target | measured | met |", "| --- | ---: | :---: |"]
    for key, target in t.items():
        v = target["value"]
        shown = ", ".join(f"{x:.2f}" for x in v) if isinstance(v, list) else f"{v:.2f}"
        lines.append(f"| {names.get(key, key)} | {shown} | {_yes(target['met'])} |")
    loads = [x for r in rows for x in (r["load_start"], r["load_end"])]
    cpu = [r["generic_cpu_per_wall"] for r in rows] + [r["single_cpu_per_wall"] for r in rows]
    name = "identities" if result["mode"] == "full" else f"identities_{result['mode']}"
    lines += ["", f"![time against identities](benchmarks/results/{name}.png)", "",
              f"Load average during the runs {min(loads):.1f}-{max(loads):.1f} on {result['machine']['cores']} cores; "
              f"CPU seconds per training second {min(cpu):.2f}-{max(cpu):.2f} "
              f"(about {result['machine']['torch_threads']} when a run has the cores to itself).",
              "", _machine_line(result)]
    return "\n".join(lines)


def backbone_table(result: dict) -> str:
    st = result["settings"]
    reach = result["fast_seconds_to_nerface_final_psnr"]
    lines = [
        f"{len(result['data']['identities'])} procedural identities, {st['size']} px, one model per backbone, same data, "
        f"conditioning, trainer and val rays; NeRFace backbone (`{st['nerface_config']}` preset, "
        f"{result['nerface']['rays_per_step']} rays/step) against the fast one (`{st['fast_config']}` preset, "
        f"{result['fast']['rays_per_step']} rays/step), `{result['mode']}` version "
        f"(`fastminerf bench backbone{' --full' if result['mode'] == 'full' else ''}`):",
        "",
        "| measure | value |",
        "| --- | ---: |",
        f"| NeRFace backbone: val PSNR after its {result['nerface_seconds']:.0f} s budget ({result['nerface_steps']} steps) "
        f"| {result['nerface_final_psnr']:.2f} dB |",
        "| fast backbone: time to that PSNR | "
        + (f"{reach:.1f} s ({result['fast_steps_to_nerface_final_psnr']} steps) |" if reach is not None else
           f"not reached in {result['fast_seconds']:.0f} s |"),
        "| speedup (target >= 20x) | " + (f"{result['speedup']:.0f}x ({_yes(result['speedup'] >= 20)}) |"
                                          if result["speedup"] is not None else "- |"),
        f"| fast backbone: val PSNR after {result['fast_seconds']:.0f} s | {result['fast_final_psnr']:.2f} dB |",
    ]
    if result["equal_time"]:
        lines += ["", "PSNR at equal training time:", "", "| seconds | NeRFace backbone | fast backbone |",
                  "| ---: | ---: | ---: |"]
        lines += [f"| {e['seconds']:.0f} | {e['nerface_psnr']:.2f} dB | {e['fast_psnr']:.2f} dB |" for e in result["equal_time"]]
    name = "backbone" if result["mode"] == "full" else f"backbone_{result['mode']}"
    n, f = result["nerface"], result["fast"]
    lines += ["", f"![PSNR over time of both backbones](benchmarks/results/{name}.png)", "",
              f"The runs are sequential: load average {n['load_before']:.1f} -> {n['load_after']:.1f} (NeRFace), "
              f"{f['load_before']:.1f} -> {f['load_after']:.1f} (fast); CPU seconds per training second "
              f"{n['cpu_per_wall']:.2f} (NeRFace), {f['cpu_per_wall']:.2f} (fast).", "", _machine_line(result)]
    return "\n".join(lines)


def novel_vs_identities_table(result: dict) -> str:
    st, t = result["settings"], result["targets"]
    seeds = sorted({r["seed"] for r in result["rows"]})
    panel = st["panel"]
    lines = [
        f"Generic models per N on procedural identities, {st['size']} px, {st['frames']} frames each, `{st['config']}` "
        f"preset, every model trained for the same {st['steps']} steps; mean over seeds {', '.join(map(str, seeds))} "
        f"(`{_command('novel_vs_identities.py', ('--seeds', seeds, [0, 1, 2, 3]))}`). The panel is the same {panel} people "
        f"at every N, each evaluated in the model of N that holds it (N < {panel}: {panel} / N models):",
        "",
        "| N | models | val PSNR (panel) | novel PSNR (panel) | novel PSNR (each model's people) "
        "| novel PSNR of identity 0 | panel novel PSNR per seed |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for m in result["mean"]:
        rows = [r for r in result["rows"] if r["n"] == m["n"]]
        per_seed = ", ".join(f"{r['novel_psnr_panel']:.2f}" for r in rows)
        lines.append(f"| {m['n']} | {rows[0]['models']} | {m['val_psnr']:.2f} dB | {m['novel_psnr_panel']:.2f} dB "
                     f"| {m['novel_psnr']:.2f} dB | {m['novel_psnr_first']:.2f} dB | {per_seed} |")
    names = {"novel_psnr_panel": "the panel's novel PSNR grows with N from 1 to 8",
             "novel_psnr": "novel PSNR over each model's people grows with N from 1 to 8",
             "novel_psnr_first": "identity 0's novel PSNR grows with N from 1 to 8"}
    lines += ["", "| target | measured | met |", "| --- | ---: | :---: |"]
    for key, target in t.items():
        lines.append(f"| {names.get(key, key)} | {', '.join(f'{x:.2f}' for x in target['value'])} | {_yes(target['met'])} |")
    lines += ["", _machine_line(result)]
    return "\n".join(lines)


def conditioning_table(result: dict) -> str:
    st = result["settings"]
    at_train = st.get("novel_poses", "own") == "train"
    poses = " --novel-poses train" if at_train else ""
    if list(st["styles"]) != [0.0, 0.6]:  # a variant's command line, as it was run
        poses += " --styles " + " ".join(f"{x:g}" for x in st["styles"])
    poses += "".join(f" --set {o}" for o in st.get("overrides", []))
    where = ("; the `novel` frames at training poses of their identity, so only the expression is new" if at_train
             else "; the `novel` frames with a head motion of their own")
    lines = [
        f"Multiplicative against concat conditioning at equal steps: {st['identities']} procedural identities x {st['frames']} frames at "
        f"{st['size']} px per dataset, `{st['config']}` preset, {st['steps']} steps each (deterministic), datasets of "
        f"seeds {', '.join(map(str, st['seeds']))}; {st['eval_frames']} frames per identity and split "
        f"(`python benchmarks/conditioning_equal_steps.py{poses}`){where}. Differences are paired by dataset; +- is the "
        f"standard error over the seeds:",
        "",
        "| heads | novel: multiplicative / concat | novel difference | per seed | product wins | val difference |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for s in result["summary"]:
        n, v = s["novel"], s["val"]
        heads = "every head moves alike (S = 0)" if s["style"] == 0 else f"own expressiveness, S = {s['style']:g}"
        lines.append(f"| {heads} | {n['multiplicative']:.2f} / {n['concat']:.2f} dB | **{n['diff_mean']:+.2f} +- "
                     f"{n['diff_se']:.2f} dB** | {', '.join(f'{d:+.2f}' for d in n['diffs'])} | {n['wins']} of "
                     f"{n['seeds']} | {v['diff_mean']:+.2f} +- {v['diff_se']:.2f} dB |")
    lines += ["", f"Target (issue 4, on the default heads): multiplicative - concat >= +1 dB on `novel`: "
              f"{_yes(result['target']['met'])}.", "", _machine_line(result)]
    return "\n".join(lines)


def pose_gap_table(result: dict) -> str:
    s, st = result["summary"], result["settings"]
    lines = [
        f"Held-out PSNR against the pose gap, frame by frame: every frame of the `{'` and `'.join(st['splits'])}` splits "
        f"of the nine real clips ({s['frames']} frames), rendered by the generic 15-minute model of the first table above (seed 0) "
        f"(`python benchmarks/pose_gap.py --run RUN`; the scatter is `benchmarks/results/pose_gap.png`). Rank "
        f"correlation of gap and PSNR over the frames (Spearman) **{s['spearman']:+.2f}**; of gap and the frame's "
        f"PSNR minus its clip's mean (what differs between people taken out) {s['spearman_within_clip']:+.2f}:",
        "",
        "| pose gap (deg) | frames | PSNR (dB) | against the clip's mean (dB) |",
        "| --- | ---: | ---: | ---: |",
    ]
    for b in s["bins"]:
        if b["frames"]:
            upper = f"{b['to_deg']:g}" if b["to_deg"] < 180 else ""
            lines.append(f"| {b['from_deg']:g}-{upper} | {b['frames']} | {b['psnr']:.2f} | {b['psnr_within_clip']:+.2f} |")
    lines += ["", _machine_line(result)]
    return "\n".join(lines)


def speech_table(result: dict) -> str:
    cfg = result["config"]

    def row(what: str, cal: dict, raw: dict, frames: str) -> str:
        return (f"| {what} | {frames} | **{cal['mouth_r2']:.2f}** ({raw['mouth_r2']:.2f}) | {cal['mouth_corr']:.2f} "
                f"({raw['mouth_corr']:.2f}) | {cal['r2']:.2f} ({raw['r2']:.2f}) |")

    lines = [
        f"Speech to expressions on held-out frames (`python benchmarks/speech.py --leave-one-out`; `speech` defaults: "
        f"{cfg['steps']} steps a network, {cfg['calibrate']}-fold calibration, context +-{cfg['context'] * 10} ms). "
        f"R2 against always predicting the training mean (0 = the mean, 1 = exact); in brackets one network without "
        f"the calibration:",
        "",
        "| data | held-out frames | mouth opening R2 | mouth opening corr | expression R2 |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for seed, r in result.get("synth", {}).items():
        lines.append(row(f"procedural heads, seed {seed} (4 voices, last quarter of each)", r["calibrated"]["all"],
                         r["uncalibrated"]["all"], str(r["calibrated"]["all"]["frames"])))
    real = result.get("real")
    if real:
        own = real["own_voice"]
        lines.append(row(f"real clips, own voice later in the clip ({len(real['clips'])} speakers, "
                         f"{real['speech_seconds']:.0f} s of speech, val + test)",
                         own["calibrated"]["all"], own["uncalibrated"]["all"], str(own["calibrated"]["all"]["frames"])))
        if "leave_one_out_mean" in real:
            m = real["leave_one_out_mean"]
            n = sum(v["calibrated"]["frames"] for v in real["leave_one_out"].values())
            lines.append(row("real clips, a voice never heard (each speaker left out in turn; mean over speakers)",
                             m["calibrated"], m["uncalibrated"], str(n)))
    e2e = _load("speech_end_to_end")
    if e2e:
        lines += ["", f"Pixels (`--render-run`): {e2e['target'][:2]} rendered saying {e2e['speaker'][:2]}'s held-out speech, "
                  f"{e2e['frames_tracked']} of {e2e['frames_rendered']} rendered frames tracked again by `prepare`: the "
                  f"mouth's opening of the render correlates {e2e['corr_rendered_commanded']:.2f} with the commanded one "
                  f"and {e2e['corr_rendered_speaker']:.2f} with the speaker's own (the commanded one: "
                  f"{e2e['corr_commanded_speaker']:.2f})."]
    ev = _load("speech_eval")
    if ev:
        names = list(ev["tracked"]["identities"])
        per = {w: ev[w]["identities"] for w in ("speech", "still")}
        wins_psnr = sum(per["speech"][n]["psnr"] > per["still"][n]["psnr"] for n in names)
        wins_lmd = sum(per["speech"][n]["lmd"] < per["still"][n]["lmd"] for n in names)
        tracked = sum(ev["tracked"]["identities"][n].get("lmd_frames", 0) for n in names)
        lines += ["", f"Rendered against the real `{ev['split']}` frames (`--eval-run`, {ev['tracked']['frames']} frames of "
                  f"{len(names)} clips never trained on; LMD = mean distance in pixels at 256 px between the 40 lip landmarks "
                  f"mediapipe finds in the render and in the frame, on the {tracked} frames where it finds both; means over clips):", "",
                  "| expressions rendered | PSNR (dB) | face-box PSNR (dB) | mouth-box PSNR (dB) | LMD (px) |",
                  "| --- | ---: | ---: | ---: | ---: |"]
        what = {"tracked": "tracked in the frame (reconstruction)", "speech": "**heard in the clip's sound** (`eval --speech`)",
                "still": "the clip's mean training expression (lips still)"}
        for w in ("tracked", "speech", "still"):
            m = ev[w]["mean"]
            mouth = f"{m['mouth_psnr']:.2f}" if "mouth_psnr" in m else "-"
            lines.append(f"| {what[w]} | {m['psnr']:.2f} | {m['face_psnr']:.2f} | {mouth} | {m['lmd']:.2f} |")
        lines += ["", f"Speech beats still lips on {wins_psnr} of {len(names)} clips in PSNR and {wins_lmd} of {len(names)} in LMD "
                  f"(this table: commit {ev['machine']['git_commit']}, {ev['machine']['torch_threads']} torch thread(s); the "
                  "model of *Training on real clips* and a speech model learned from its data)."]
    lines += ["", _machine_line(result)]
    return "\n".join(lines)


def render_speed_table(result: dict) -> str:
    st = result["settings"]
    command = _command("render_speed.py", ("--frames", st["frames_per_identity"], 2), ("--repeats", st["repeats"], 2),
                       ("--split", st["split"], "test"))
    lines = [
        f"The real-clip model of the table above ({st['trained_steps']} steps) rendering {st['frames']} test frames "
        f"({st['frames_per_identity']} a clip) at {st['size'][0]}x{st['size'][1]} px, every setting on the same frames in "
        f"one run, best of {st['repeats']} renders a frame (`{command}`). `preset`: the run's own "
        f"settings ({st['eval_render_steps']} marching steps across the box); `staged`: `model.prune_stages` [8, 32]; "
        "`128 steps`: `model.eval_render_steps` 128 (training's lattice). Speed-up and PSNR change against `preset` at "
        "the same thread count:",
        "",
        "| setting | threads | s a frame | frames/s | rays/s | samples a ray (marched) | PSNR (dB) | speed-up | PSNR change (dB) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in result["rows"]:
        lines.append(f"| {r['variant']} | {r['threads']} | {r['seconds_per_frame']:.2f} | {r['frames_per_second']:.2f} | "
                     f"{r['rays_per_second'] / 1e3:.0f}k | {r['samples_per_ray']:.1f} | {r['psnr']:.2f} | "
                     f"{r['speedup']:.2f}x | {r['psnr_delta']:+.2f} |")
    lines += ["", _machine_line(result)]
    return "\n".join(lines)


def transfer_poses_table(result: dict) -> str:
    sm = result["summary"]
    n_pairs, n_clips = len(result["pairs"]), len(result["settings"]["clips"])
    lines = [
        f"Where the driven head lands, {n_pairs} ordered pairs of the {n_clips} prepared real clips, each target driven by "
        "the driver's `test` frames (`python benchmarks/transfer_poses.py`), against the target's own training frames: "
        "the head centre's distance in the picture from its mean place there (px at 256 px), its size against its "
        "mean size there (the absolute log2 of the camera-distance ratio: 0.26 is 20 %), and the angle to the nearest "
        "training head pose (a view the target's field extrapolates):",
        "",
        "| head poses | offset (px), mean / max | size, abs. log2 ratio, mean / max | pose gap (deg), mean / max |",
        "| --- | ---: | ---: | ---: |",
    ]
    for mode, label in (("driver", "`driver`: the driver's cameras"), ("relative", "`relative` (default)")):
        a, b = sm[mode], sm[f"{mode}_max"]
        lines.append(f"| {label} | {a['offset_px']:.1f} / {b['offset_px']:.1f} | {a['scale']:.3f} / {b['scale']:.3f} | "
                     f"{a['pose_gap_deg']:.1f} / {b['pose_gap_deg']:.1f} |")
    o = sm["own_test"]
    lines += [f"| each clip's own `test` frames, for scale | {o['offset_px']:.1f} | {o['scale']:.3f} | {o['pose_gap_deg']:.1f} |",
              "", _machine_line(result)]
    return "\n".join(lines)


def real_personalize_table(result: dict) -> str:
    st, gen = result["settings"], result["generic"]
    tunes = st.get("tunes", ["grid", "all"])
    command = _command("real_personalize.py", ("--new", st["new"], "02_hdtf_WDA_AlexandriaOcasioCortez_000"),
                       ("--generic-minutes", st["generic_minutes"], 6.0), ("--budgets", st["budgets_s"], [30.0, 120.0]),
                       ("--threads", st["threads"], 2), ("--config", st["config"], "video"),
                       ("--tunes", tunes, ["grid", "all"]))
    lines = [
        f"`{st['new']}` added to a generic model of the other {len(st['generic_clips'])} clips (`{st['config']}` preset, "
        f"{st['generic_minutes']:g} minutes, {gen['steps']} steps, {st['threads']} threads) or trained alone from scratch "
        f"for the same seconds, PSNR (dB) / SSIM on its `test` frames (`{command}`):",
        "",
        "| seconds of training | " + " | ".join(f"personalised, `{t}`" for t in tunes) + " | alone from scratch |",
        "| ---: | " + " | ".join("---:" for _ in tunes) + " | ---: |",
    ]
    for r in result["rows"]:
        cells = [r[f"personalized_{t}"] for t in tunes] + [r["alone"]]
        best = max(c["psnr"] for c in cells)
        fmt = lambda c: (f"**{c['psnr']:.2f} / {c['ssim']:.3f}**" if c["psnr"] == best  # noqa: E731
                         else f"{c['psnr']:.2f} / {c['ssim']:.3f}")
        lines.append(f"| {r['budget_s']:g} | " + " | ".join(fmt(c) for c in cells) + " |")
    lines += ["", _machine_line(result)]
    return "\n".join(lines)


TABLES = {"kernels": kernels_table, "train_targets": train_targets_table, "prepare": prepare_table,
          "real_clips": real_clips_table, "real_clips_finetune": real_clips_table, "identities": identities_table, "backbone": backbone_table,
          "novel_vs_identities": novel_vs_identities_table, "conditioning_equal_steps": conditioning_table,
          "conditioning_equal_steps_trainposes": conditioning_table,
          "conditioning_equal_steps_noidlevels": conditioning_table, "speech": speech_table,
          "render_speed": render_speed_table, "transfer_poses": transfer_poses_table, "pose_gap": pose_gap_table,
          "real_personalize": real_personalize_table, "real_personalize_05": real_personalize_table}


def main(argv=None) -> int:
    """Rewrite the generated blocks of ``--readme`` (default README.md); with ``--check``, write nothing and exit 1
    naming the blocks that differ from what the JSON files give."""
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--readme", type=Path, default=ROOT / "README.md", help="the file whose blocks are regenerated")
    ap.add_argument("--check", action="store_true",
                    help="do not write: list the blocks that are out of date with benchmarks/results (exit 1 if any)")
    args = ap.parse_args(argv)
    readme = args.readme
    text = readme.read_text()
    stale = []
    for name, render in TABLES.items():
        result = _load(name)
        if result is None:
            continue
        block = f"<!-- BEGIN {name} (generated by benchmarks/report.py) -->\n{render(result)}\n<!-- END {name} -->"
        pattern = re.compile(rf"<!-- BEGIN {name} .*?-->.*?<!-- END {name} -->", re.S)
        found = pattern.search(text)
        if not found:
            print(f"README has no block for {name}; add '<!-- BEGIN {name} -->' / '<!-- END {name} -->'", file=sys.stderr)
            continue
        if found.group(0) != block:
            stale.append(name)
        text = pattern.sub(lambda _: block, text)
    if args.check:
        print("out of date: " + ", ".join(stale) if stale else "every generated block is up to date")
        return 1 if stale else 0
    readme.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
