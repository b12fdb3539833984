"""What the demo's report leads with: which segmenter to trust on the real images, how sure that
is, and how well the synthetic benchmark agrees with the real one; and the demo's own goals.

"How sure" is a paired bootstrap over the real test images (the same draw for every segmenter):
the interval of the best segmenter's pooled AP@0.5, and the share of resamples in which it stays
ahead of the runner-up (:mod:`cellsynth.benchmark.validity` supplies the pooled counts).
"""

from __future__ import annotations

import numpy as np

from cellsynth.benchmark import validity

DEEP_GOAL = 0.5  # every deep segmenter above this AP@0.5 on the real images
COUNT_GOAL = 0.15  # synthetic masks within 15 % of real in objects per image and mean area
AGREE = 0.9  # the Spearman the validity issue asks of a synthetic benchmark


def _real_key(results: dict) -> str | None:
    kinds = validity.classify_test_sets(results)
    real = [k for k, why in kinds.items() if not why]
    return real[0] if real else None


def best_on_real(results: dict, n_boot: int = 1000, seed: int = 0) -> dict | None:
    """The segmenters ranked by pooled AP@0.5 on the real test set, with bootstrap intervals.

    Returns None when there is no real test set or no segmenter scored on it; else ``real``
    (its key), ``ranking`` (``[{"segmenter", "ap50", "ci", "mean_ap"}]``, best first) and, with
    two or more segmenters, ``lead`` (``{"over", "diff", "ci", "share"}``: the best one's margin
    over the runner-up, its interval and the share of resamples it stays ahead in).
    """
    key = _real_key(results)
    if key is None:
        return None
    tables = {}
    for name, seg in (results.get("segmenters") or {}).items():
        d = (seg.get("datasets") or {}).get(key) or {}
        if d.get("status") == "ok" and d.get("images"):
            tables[name] = validity.image_table(d["images"], f"{name} on {key}")
    if not tables:
        return None
    n = len(next(iter(tables.values()))["n_true"])
    weights = validity.bootstrap_weights(np.random.default_rng(seed), n, n_boot)
    point = {s: validity.table_scores(t) for s, t in tables.items()}
    boot = {s: validity.table_scores(t, weights)["ap50"] for s, t in tables.items()}
    order = sorted(tables, key=lambda s: -np.nan_to_num(point[s]["ap50"], nan=-1.0))
    ranking = [
        {
            "segmenter": s,
            "ap50": point[s]["ap50"],
            "mean_ap": point[s]["mean_ap"],
            "ci": validity.interval(boot[s], point[s]["ap50"]),
        }
        for s in order
    ]
    out = {"real": key, "n_images": n, "ranking": ranking}
    if len(order) > 1:
        a, b = order[0], order[1]
        diff = boot[a] - boot[b]
        point_diff = point[a]["ap50"] - point[b]["ap50"]
        out["lead"] = {
            "over": b,
            "diff": point_diff,
            "ci": validity.interval(diff, point_diff),
            "share": float(np.mean(diff[np.isfinite(diff)] > 0)),
        }
    return out


def agreement(results: dict) -> dict | None:
    """Spearman (with interval) for AP@0.5 and mean AP, and the flips, of the first synthetic
    vs real comparison of ``results["validity"]`` (None when the run has none)."""
    comps = (results.get("validity") or {}).get("comparisons") or []
    if not comps:
        return None
    comp = comps[0]
    out = {"synthetic": comp["synthetic"], "real": comp["real"], "metrics": {}}
    for m in ("ap50", "mean_ap"):
        block = comp["metrics"].get(m)
        if block:
            out["metrics"][m] = {
                "spearman": block["spearman"],
                "kendall": block["kendall"],
                "flips": block["flips"],
                "ranking_synthetic": block["ranking_synthetic"],
                "ranking_real": block["ranking_real"],
            }
    return out


def demo_goals(results: dict | None, realism: dict | None) -> dict:
    """The demo's own goals: synthetic masks within 15 % of real (objects per image, mean area),
    every deep segmenter above AP@0.5 0.5 on the real images, the Spearman reported."""
    goals = {}
    if realism:
        for key in ("objects_per_image", "mean_area"):
            g = realism["goals"][key]
            value = f"{g['synthetic']:.3g} vs {g['real']:.3g}"
            if key == "objects_per_image" and "edge_objects_per_image_fake" in realism:
                # where a shortfall sits: the objects cut by the image's edge, or those inside
                value += (
                    f" (cut by the edge {realism['edge_objects_per_image_fake']:.3g} vs "
                    f"{realism['edge_objects_per_image_real']:.3g})"
                )
            goals[f"synthetic {key.replace('_', ' ')} within 15% of real"] = {
                "value": value,
                "met": g["met"],
            }
    ranked = best_on_real(results, n_boot=1) if results else None
    if ranked:
        deep = [r for r in ranked["ranking"] if r["segmenter"] != "classical"]
        low = [r["segmenter"] for r in deep if not r["ap50"] > DEEP_GOAL]
        goals["every deep segmenter above AP@0.5 0.5 on the real images"] = {
            "value": ", ".join(f"{r['segmenter']} {r['ap50']:.3f}" for r in deep) or "none run",
            "met": bool(deep) and not low,
        }
    agree = agreement(results) if results else None
    sp = (agree or {}).get("metrics", {}).get("ap50", {}).get("spearman")
    goals["synthetic-vs-real Spearman reported with its interval"] = {
        "value": "-" if not sp else _with_ci(sp["value"], sp.get("ci")),
        "met": bool(sp and sp.get("value") is not None),
    }
    return goals


def _with_ci(value, ci) -> str:
    if value is None:
        return "-"
    if not ci:
        return f"{value:.3f}"
    return f"{value:.3f} (95% CI {ci['low']:.3f} to {ci['high']:.3f})"


def headline(results: dict | None) -> list[str]:
    """The report's opening sentences (plain text; the report escapes them)."""
    lines = []
    ranked = best_on_real(results) if results else None
    if ranked is None:
        return ["No segmenter was scored on the real images, so there is no answer to give."]
    top = ranked["ranking"][0]
    lines.append(
        f"Trust {top['segmenter']} on these images: on the {ranked['n_images']} real test images "
        f"it scores pooled AP@0.5 {_with_ci(top['ap50'], top['ci'])}, mean AP "
        f"{top['mean_ap']:.3f}."
    )
    lead = ranked.get("lead")
    if lead:
        sure = (
            "a clear lead"
            if lead["share"] >= 0.95
            else "a lead, but not a certain one"
            if lead["share"] >= 0.75
            else "no real lead"
        )
        lines.append(
            f"Over the runner-up, {lead['over']}, that is {sure}: "
            f"{_with_ci(lead['diff'], lead['ci'])} AP@0.5, ahead in "
            f"{100 * lead['share']:.0f}% of bootstrap resamples of the images."
        )
    agree = agreement(results)
    if agree and agree["metrics"].get("ap50"):
        a = agree["metrics"]["ap50"]
        sp = a["spearman"]
        flips = ", ".join(
            f"{f['better_on_synthetic']} over {f['better_on_real']}" for f in a["flips"]
        )
        lines.append(
            "Synthetic against real ranking of the segmenters by AP@0.5: Spearman "
            f"{_with_ci(sp['value'], sp.get('ci'))}; "
            + (
                f"order flipped for {flips} (better on synthetic over better on real)."
                if flips
                else "no pair of segmenters changes order."
            )
        )
        low = (sp.get("ci") or {}).get("low")
        if sp["value"] is not None and (sp["value"] < AGREE or (low is not None and low < AGREE)):
            lines.append(
                f"With a Spearman {'' if sp['value'] < AGREE else 'interval reaching '}below "
                f"{AGREE}, this synthetic set does not predict the real ranking: choose a "
                "segmenter on real images, and read the synthetic scores as a stress test."
            )
    else:
        lines.append("The rank agreement needs 3 or more segmenters on both test sets.")
    return lines
