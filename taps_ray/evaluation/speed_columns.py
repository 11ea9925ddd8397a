"""Speed in result rows and report tables, kept honest (DESIGN.md §2-3).

Glossary:
    live tokens/s      sum(new_tokens) / sum(wall_s) of rows decoded live (`mode = live`): the
                       only measured decoding speed. Replay rows never count here.
    speedup vs plain   a label's live tokens/s over the `plain` rows' of the same run_id and
                       benchmark (same prompts, same machine); several runs: mean of their ratios.
    predicted tokens/s tau / step seconds from a machine profile (taps_ray.speed), filled into
                       replay rows by `add_predicted_speed`; pooled as committed tokens / time.
    base label         a row label without the drafter-set tag and the report's ' [live]' mark.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from taps_ray.errors import TapsError

PLAIN = "plain"  # the label the bench gives plain autoregressive decoding rows
LIVE_MARK = " [live]"  # added by report.load_inputs where live and replay share a temperature
SPEEDUP = "speedup vs plain (live, same run)"
PREDICTED_SPEEDUP = "predicted speedup vs plain (1/T1)"
_TAG = re.compile(r" \([^()]*\)$")  # "merged/sum (eagle2)": the drafter set's name
_TREE = re.compile(r" @ \d+-\d+-\d+$")  # "math-hass @ 4-2-2": speed_select's live rows


def base_label(label: str) -> str:
    """`merged/sum (eagle2) [live]` -> `merged/sum`; `math-hass @ 4-2-2` (a label with its tree,
    as the speed stage writes them) -> `math-hass`; a drafter's own name stays as it is."""
    label = _TREE.sub("", label.removesuffix(LIVE_MARK))
    return _TAG.sub("", label)


def strategy_name(label: str, drafters: list[str]) -> str:
    """The strategy label a row stands for, as taps_ray.speed.predict reads it: a drafter's own
    name is `single`; `merged/sum (eagle2)` is `merged/sum`; plain rows are `plain`."""
    label = label.removesuffix(LIVE_MARK)
    if label == PLAIN or not len(drafters):
        return PLAIN
    base = base_label(label)
    return "single" if base in drafters else base


def profile_slug(profile) -> str:
    """A profile's short name: its file stem under the taps cache (one per hardware key)."""
    from taps_ray.speed.profile import default_profile_path

    return default_profile_path(profile.key).stem


def add_predicted_speed(rows, profile, errors: list[str] | None = None):
    """A copy of `rows` whose replay rows carry `predicted_tokens_per_s` and `profile`.

    Each replay row's tau, drafters, strategy (from its label), tree and verify tokens per step
    go through `taps_ray.speed.predict.predicted_tokens_per_s`. Live rows keep what they had
    (NaN when absent). With an `errors` list, a row the profile cannot price (a drafter it has
    no cost for) stays NaN and the reason is appended; without one, that TapsError propagates.
    """
    out = with_speed_columns(rows)
    replay = out.index[out["mode"] == "replay"] if "mode" in out.columns else out.index[:0]
    slug = profile_slug(profile)
    for index in replay:
        try:
            value = _predict(out.loc[index], profile)
        except TapsError as err:
            if errors is None:
                raise
            errors.append(str(err))
            continue
        if value is not None:
            out.loc[index, ["predicted_tokens_per_s", "profile"]] = [value, slug]
    return out


def fill_predicted(rows, profile, notes: list[str]):
    """Price the replay rows that carry no prediction yet (older files, or rows written without
    a profile); rows priced by another profile keep theirs. Unpriced rows become one note."""
    out = with_speed_columns(rows)
    missing = out["predicted_tokens_per_s"].isna()
    errors: list[str] = []
    priced = add_predicted_speed(out[missing], profile, errors)
    columns = ["predicted_tokens_per_s", "profile"]
    out.loc[missing, columns] = priced[columns]
    if errors:
        notes.append(f"{len(errors)} replay rows have no predicted tokens/s under profile "
                     f"{profile_slug(profile)}: {'; '.join(sorted(set(errors)))}")
    return out


def with_speed_columns(rows):
    """A copy with `predicted_tokens_per_s` (float, NaN = none) and `profile` (str, "" = none):
    files written before these columns existed read as unpriced."""
    out = rows.copy()
    predicted = out["predicted_tokens_per_s"] if "predicted_tokens_per_s" in out else math.nan
    out["predicted_tokens_per_s"] = predicted
    out["predicted_tokens_per_s"] = out["predicted_tokens_per_s"].astype(float)
    profile = out["profile"].fillna("") if "profile" in out else ""
    out["profile"] = profile
    out["profile"] = out["profile"].astype(object)
    return out


def _predict(row, profile) -> float | None:
    """Predicted tokens/s of one replay row; None when it has no steps to price."""
    from taps_ray.config.schema import TreeConfig
    from taps_ray.speed.predict import plain_tokens_per_s, predicted_tokens_per_s

    drafters = [str(d) for d in row["drafters"]]
    strategy = strategy_name(str(row["strategy"]), drafters)
    if strategy == PLAIN:
        return plain_tokens_per_s(profile)
    if not row["steps"] > 0 or not math.isfinite(row["tau"]):
        return None
    tree = TreeConfig(int(row["total_tokens"]), int(row["depth"]), int(row["top_k"]))
    return float(predicted_tokens_per_s(profile, float(row["tau"]), drafters, strategy, tree,
                                        float(row["verify_tokens_per_step"])))


# ---------------------------------------------------------------------------------------------
# tables: one row per (label, benchmark), tau beside speed


def live_speed_table(df, temperature: float):
    """Live rows only: tau, tokens/s and speedup vs plain per (label, benchmark).

    Columns: benchmark, tau (pooled), verify tokens/step, tokens/s, SPEEDUP. Sorted by benchmark
    (paper order), fastest first. Empty when no live row exists at this temperature.
    """
    import pandas as pd

    live = _live(df)
    live = live[live["temperature"] == temperature]
    if live.empty:
        return pd.DataFrame()
    live = live.assign(label=live["strategy"].map(base_label_keep_tag))
    per_run = _pooled(live, ["run_id", "label", "benchmark"], "new_tokens", "wall_s")
    plain = per_run[per_run.index.get_level_values("label") == PLAIN]
    plain = plain.droplevel("label")["tokens/s"]
    ratio = per_run["tokens/s"] / plain.reindex(per_run.index.droplevel("label")).to_numpy()
    table = _pooled(live, ["label", "benchmark"], "new_tokens", "wall_s")
    table[SPEEDUP] = ratio.groupby(level=["label", "benchmark"]).mean()
    return _ordered(table, "tokens/s")


def predicted_speed_table(df, temperature: float, profile_name: str, t1_s: float | None = None):
    """Replay rows of one profile: tau and predicted tokens/s per (label, benchmark).

    Pooled as committed tokens / predicted seconds (tau * steps / (tau * steps / predicted)).
    With the profile's T1 the predicted speedup over predicted plain decoding (1 / T1) is added.
    """
    import pandas as pd

    if "predicted_tokens_per_s" not in df.columns or "profile" not in df.columns:
        return pd.DataFrame()
    rows = df[(df["temperature"] == temperature) & (df["profile"] == profile_name)]
    rows = rows[rows["predicted_tokens_per_s"].astype(float) > 0]
    if "mode" in rows.columns:
        rows = rows[rows["mode"] == "replay"]
    if rows.empty:
        return pd.DataFrame()
    committed = rows["tau"] * rows["steps"]
    rows = rows.assign(label=rows["strategy"].map(base_label_keep_tag), _committed=committed,
                       _seconds=committed / rows["predicted_tokens_per_s"].astype(float))
    table = _pooled(rows, ["label", "benchmark"], "_committed", "_seconds")
    table = table.rename(columns={"tokens/s": "predicted tokens/s"})
    if t1_s:
        table[PREDICTED_SPEEDUP] = table["predicted tokens/s"] * t1_s
    return _ordered(table, "predicted tokens/s")


def predicted_profiles(df) -> list[str]:
    """Profile names that replay rows carry predicted tokens/s for, sorted."""
    if "predicted_tokens_per_s" not in df.columns or "profile" not in df.columns:
        return []
    has = df["predicted_tokens_per_s"].astype(float) > 0
    return sorted({str(p) for p in df.loc[has, "profile"] if isinstance(p, str) and p})


def base_label_keep_tag(label: str) -> str:
    """Speed tables hold live rows only, so the report's ' [live]' mark says nothing there."""
    return str(label).removesuffix(LIVE_MARK)


def _live(df):
    return df[df["mode"] == "live"] if "mode" in df.columns else df


def _pooled(rows, keys: list[str], tokens: str, seconds: str):
    """tau pooled over steps, verify tokens per step, and tokens / seconds per group."""
    import pandas as pd

    grouped = rows.assign(_tau_steps=rows["tau"] * rows["steps"],
                          _verify_steps=rows["verify_tokens_per_step"] * rows["steps"])
    sums = grouped.groupby(keys)[["_tau_steps", "_verify_steps", "steps", tokens, seconds]].sum()
    steps = sums["steps"].where(sums["steps"] > 0)
    return pd.DataFrame({
        "tau": sums["_tau_steps"] / steps,
        "verify tokens/step": sums["_verify_steps"] / steps,
        "tokens/s": sums[tokens] / sums[seconds].where(sums[seconds] > 0),
    })


def _ordered(table, speed: str):
    """Benchmarks in paper order, fastest label first within each; `label` as the index."""
    from taps_ray.evaluation.report import bench_order

    flat = table.reset_index()
    order = bench_order(set(flat["benchmark"]))
    flat["_rank"] = flat["benchmark"].map(order.index)
    flat = flat.sort_values(["_rank", speed, "label"], ascending=[True, False, True])
    return flat.drop(columns="_rank").set_index("label")


# ---------------------------------------------------------------------------------------------
# the report's speed tables


@dataclass(frozen=True)
class SpeedTable:
    kind: str  # "live-speed" | "predicted-speed": id prefix and the `table` column of speed.csv
    temperature: float
    title: str
    caption: str  # one sentence under the title: where the numbers come from
    table: object  # DataFrame indexed by label (see live_speed_table / predicted_speed_table)
    profile: str = ""  # predicted tables: the profile's slug


LIVE_TITLE = "Tokens/s measured live, with tau and speedup vs plain"
LIVE_CAPTION = ("Live rows only (mode = live): sum new_tokens / sum wall_s; the speedup divides "
                "by the `plain` rows of the same run and benchmark. Replay rows never appear here.")
PREDICTED_CAPTION = ("Not measured: replay tau / step seconds from the profile's T1, Tv(n), draft "
                     "and overhead costs (taps_ray.speed.predict).")


def speed_tables(rows, profile=None) -> list[SpeedTable]:
    """Per temperature: the live table, then one predicted table per profile found in rows."""
    temps = sorted(float(t) for t in rows["temperature"].unique())
    out = []
    for temp in temps:
        live = live_speed_table(rows, temp)
        if not live.empty:
            out.append(SpeedTable("live-speed", temp, LIVE_TITLE, LIVE_CAPTION, live))
        for name in predicted_profiles(rows):
            t1 = profile.t1_s if profile is not None and profile_slug(profile) == name else None
            table = predicted_speed_table(rows, temp, name, t1)
            if not table.empty:
                out.append(SpeedTable("predicted-speed", temp,
                                      f"Predicted tokens/s (profile {name}), replay rows",
                                      PREDICTED_CAPTION, table, name))
    return out


def render_speed_csv(tables: list[SpeedTable]) -> str:
    """Every speed table in one long CSV: table, temperature, profile, label, benchmark, ..."""
    import pandas as pd

    frames = [t.table.reset_index().assign(table=t.kind, temperature=t.temperature,
                                           profile=t.profile) for t in tables]
    long = pd.concat(frames, ignore_index=True)
    first = ["table", "temperature", "profile", "label", "benchmark"]
    return long[first + [c for c in long.columns if c not in first]].to_csv(index=False)
