"""The run report: one markdown document for the console, the Prefect artifact and MLflow."""

from __future__ import annotations

import math
import re
import shlex
from collections.abc import Mapping

METRICS = (
    "spearman",
    "kendall",
    "mape",
    "interval_coverage",
    "uncertainty_spearman",
    "uncertainty_spearman_relative",
    "uncertainty_spearman_samples",
    "n",
    "n_failed",
)
# What a column means, for readers of the report rather than of the metric keys.
HEADERS = {
    "spearman": "Spearman",
    "kendall": "Kendall",
    "mape": "MAPE %",
    "interval_coverage": "10-90% coverage (nominal 0.80)",
    "uncertainty_spearman": "spread-error Spearman",
    "uncertainty_spearman_relative": "relative spread-error Spearman",
    "uncertainty_spearman_samples": "spread-error Spearman, raw samples",
    "n": "records",
    "n_failed": "records without a number",
}
COUNTS = {"n", "n_failed"}


def code(text: object) -> str:
    """`text` as inline code, whatever it holds: a fence of one more backtick than its longest
    run, on one line. A task, file or model name comes from data or configs: put in between
    single backticks, a backtick in it ended the span, and what followed rendered as markdown
    (`**bold**`, raw HTML) in the console, the Prefect artifact and MLflow."""
    one_line = " ".join(str(text).splitlines()) or " "
    fence = "`" * (1 + max((len(run) for run in re.findall("`+", one_line)), default=0))
    pad = " " if one_line.startswith("`") or one_line.endswith("`") else ""
    return f"{fence}{pad}{one_line}{pad}{fence}"


def plain(text: object) -> str:
    """Free text (a reason, an error) on one line, HTML and table bars inert: a newline in it
    started a heading, a `<script>` passed through raw, a `|` split a table cell."""
    one_line = " ".join(str(text).splitlines())
    return one_line.replace("&", "&amp;").replace("<", "&lt;").replace("|", "\\|")


def _cell(value: float | None, metric: str = "") -> str:
    if value is None or math.isnan(value):
        return "-"
    if abs(value) >= 1e6:  # a barely trained model's MAPE of 1.7e306 was 310 digits wide
        return f"{value:.3g}"
    return f"{value:.0f}" if metric in COUNTS else f"{value:.3f}"


def metrics_table(
    rows: Mapping[str, Mapping[str, float]], metrics: tuple[str, ...] = METRICS
) -> str:
    """One row per model, one column per metric that says something here (`_informative`)."""
    shown = [m for m in metrics if _informative(m, rows)]
    header = "| model | " + " | ".join(HEADERS.get(m, m) for m in shown) + " |"
    rule = "|---" * (len(shown) + 1) + "|"
    lines = [header, rule]
    for name, values in rows.items():
        cells = " | ".join(_cell(values.get(m), m) for m in shown)
        lines.append(f"| {plain(name)} | {cells} |")
    return "\n".join(lines)


def _informative(metric: str, rows: Mapping[str, Mapping[str, float]]) -> bool:
    """A column with a value in some row; the raw samples' spread-error Spearman only where it
    differs from the served one (a pooled conformal scale stretches every spread alike, which
    keeps their ranks: it would read as a second, independent check); the records without a
    number only where some model has any (they are in no other column: a model failing on its
    hard records read as good as one that scored them all)."""
    values = [v.get(metric) for v in rows.values()]
    if all(v is None or math.isnan(v) for v in values):
        return False
    if metric == "n_failed":
        return any(v is not None and v > 0 for v in values)
    if metric != "uncertainty_spearman_samples":
        return True
    return any(_differ(v.get(metric), v.get("uncertainty_spearman")) for v in rows.values())


def _differ(a: float | None, b: float | None) -> bool:
    missing = [x is None or math.isnan(x) for x in (a, b)]
    return missing[0] != missing[1] or (not any(missing) and a != b)


def timings_table(seconds: Mapping[str, float]) -> str:
    lines = ["| step | seconds |", "|---|---|"]
    lines += [f"| {step} | {value:.1f} |" for step, value in seconds.items()]
    lines.append(f"| **total** | {sum(seconds.values()):.1f} |")
    return "\n".join(lines)


def bullet_list(items: Mapping[str, object]) -> str:
    return "\n".join(f"- **{key}**: {value}" for key, value in items.items())


def ingest_summary(ingested) -> str:
    lines = bullet_list(
        {
            "files seen": ingested.files_seen,
            "ingested": ingested.files_ingested,
            "unchanged": ingested.files_unchanged,
            "quarantined": ingested.files_quarantined,
            "records added": ingested.records_added,
            "records in source": ingested.records,
        }
    )
    quarantined = _listed(
        [
            f"- {code(file)}: {plain(reason.removeprefix(f'{file}: '))}"  # named once, not twice
            for file, reason in ingested.quarantined
        ],
        "the warehouse's `quarantine` table holds them all",
    )
    forgotten = _listed([f"- {code(path)}" for path in ingested.files_forgotten], "")
    unmatched = _listed(
        [f"- {code(task)}: {n} rows" for task, n in ingested.unmatched_targets.items()],
        "`sql/queries/unmatched_targets.sql` lists them all",
    )
    return (
        lines
        + ("\n\nQuarantined:\n\n" + quarantined if quarantined else "")
        + ("\n\nForgotten (gone for good, rows dropped):\n\n" + forgotten if forgotten else "")
        + (
            "\n\nTargets of a task no config or no log names (no record; a misspelt task?):\n\n"
            + unmatched
            if unmatched
            else ""
        )
    )


# Lines a list of the report shows; the rest are counted.
MAX_LISTED = 50


def _listed(lines: list[str], where: str) -> str:
    """The first `MAX_LISTED` lines, then how many more and `where` to find them: the list
    stopped at 50 without a word, and `textperf ingest` sends readers here for the rest."""
    more = len(lines) - MAX_LISTED
    tail = [f"- ... and {more} more" + (f" ({where})" if where else "")] if more > 0 else []
    return "\n".join(lines[:MAX_LISTED] + tail)


def render_ingest(ingested) -> str:
    return f"# textperf ingest of {code(ingested.source)}\n\n{ingest_summary(ingested)}\n"


def adaptation_scores(
    outcome, zero_shot: str, from_scratch: str, fallback: str = "zero-shot fallback"
) -> dict[str, dict[str, float]]:
    """The variant's scores on the task's test records by row label, the from-scratch reference
    only when it was trained (`adapt.from_scratch_reference`), the zero-shot fallback only when
    one was registered (`pipeline.ZeroShotFallback`)."""
    rows = {zero_shot: outcome.zero_shot, "adapted": outcome.adapted}
    rows |= {from_scratch: outcome.from_scratch} if outcome.from_scratch else {}
    return rows | ({fallback: outcome.fallback.scores} if outcome.fallback else {})


def shots_used(outcome) -> str:
    """How the variant's shots were cut (`adaptation.hold_out_gate`), e.g. "120 shots: 77
    trained, 19 stopped the fine-tuning, 24 for the gate"."""
    fit = outcome.fit
    if not fit.n_train:  # a fit recorded before the records were counted
        return f"{outcome.n_shots} shots"
    gate = outcome.n_shots - fit.n_train - fit.n_val
    return (
        f"{outcome.n_shots} shots: {fit.n_train} trained, {fit.n_val} stopped the fine-tuning, "
        f"{gate} for the gate"
    )


def reference_cost(outcome) -> str:
    """What the from-scratch reference cost, as a sentence; "" without one."""
    fit = outcome.scratch_fit
    if fit is None:
        return ""
    return (
        f" The from-scratch reference trained {fit.steps} steps in {fit.seconds:.0f} s "
        "(`adapt.from_scratch_reference: false` skips it; the gate never reads it)."
    )


def intervals_used(outcome) -> str:
    """What the variant's 10-90% intervals rest on, as a sentence; "" when not recorded (a
    variant adapted before `adaptation.recalibrate` existed)."""
    return f" Its intervals: {outcome.intervals}." if outcome.intervals else ""


def adaptation_gate(outcome) -> str:
    """The variant's gate (a `pipeline.AdaptOutcome`): the scores it compared and the verdict."""
    verdict = "Promoted" if outcome.promoted else "Refused"
    return "\n\n".join(
        [
            "Gate, on the latest shots, kept out of fine-tuning and of its early stopping (not "
            "the test records above), the adapted model as fine-tuned: its intervals were "
            "fitted on these shots afterwards.",
            metrics_table(
                {
                    "base, zero-shot": outcome.validation["zero_shot"],
                    "adapted": outcome.validation["adapted"],
                }
            ),
            f"{verdict}: {plain(outcome.reason)}. Predict {code(outcome.task)} with "
            f"{code(outcome.use_uri)}{fallback_served(outcome)}.",
        ]
    )


def fallback_served(outcome) -> str:
    """What serves the task in the refused variant's place, as a clause; "" without one."""
    if outcome.fallback is None:
        return ""
    return (
        f" (v{outcome.fallback.version}, its zero-shot fallback: the base's weights unchanged; "
        f"its intervals: {outcome.fallback.intervals})"
    )


def adaptation_lineage(outcome) -> str:
    """Which variant, from which base; for a reused one (`pipeline.AdaptOutcome.reused`), that
    nothing was adapted now and the scores are the earlier run's."""
    if not outcome.reused:
        text = f"Registered {code(outcome.uri)} from {code(outcome.base_uri)}."
    else:
        text = (
            f"{code(outcome.uri)}, **not adapted again**: it was adapted from "
            f"{code(outcome.base_uri)} on this data snapshot with these configs, and the scores "
            "and gate are its run's; `textperf adapt --force` adapts again."
        )
    if outcome.base_trained_on_task:
        text += (
            f" **The base trained on {code(outcome.task)}'s records** before its test days (it "
            "held out another task), so its zero-shot scores on the shots, which the gate compares "
            "with, are in-sample; its test scores are not."
        )
    return text


def training_summary(trained) -> dict[str, str]:
    """The trained (or reused) model, the gate's decision and the run that trained it."""
    fit = trained.fit
    on = f" on {fit.processes} processes" if fit.processes > 1 else ""
    model = (
        f"{code(trained.uri)} ({trained.n_parameters:,} parameters, "
        f"{fit.steps} steps in {fit.seconds:.0f} s{on})"
    )
    decision = f"{'promoted' if trained.promoted else 'kept'}: {trained.reason}"
    if not trained.reused:
        return {"model": model, "champion": decision, "MLflow run": trained.run_id}
    return {
        "model": f"{model}, **not retrained**: it was trained from this data snapshot with "
        "these configs (the table above is its run's); `textperf retrain --force-train` "
        "trains again",
        "champion": f"{decision} (when it was registered)",
        "MLflow run": f"{trained.run_id} (the run that trained it"
        + (", since deleted from the tracking store)" if trained.run_deleted else ")"),
    }


def predict_command(paths, model_uri: str) -> str:
    """The predict command to copy, reading the store the model went to: one the config or
    the environment named by `MLFLOW_TRACKING_URI` (a tracking server named by the config was
    left out, and the command then read the local store), a SQLite one outside the default var
    dir by `--var-dir`."""
    from regressor.config import PathsConfig

    command = f"textperf predict --model {shlex.quote(model_uri)}"
    if paths.mlflow_server is not None:
        return f"MLFLOW_TRACKING_URI={shlex.quote(paths.tracking_uri)} {command} RECORD.json"
    if paths.var_dir != PathsConfig().resolve().var_dir:  # quoted: a var dir with a space
        return f"{command} --var-dir {shlex.quote(str(paths.var_dir))} RECORD.json"
    return f"{command} RECORD.json"


def ui_line(paths) -> str:
    """Where to browse the runs: a tracking server is its own UI."""
    from regressor.config import is_tracking_server

    if is_tracking_server(paths.tracking_uri):
        return paths.tracking_uri
    return code(f"mlflow ui --backend-store-uri {shlex.quote(paths.tracking_uri)}")


def render_retrain(
    app,
    paths,
    ingested,
    trained,
    adapted,
    seconds: Mapping[str, float],
    skipped=(),
    failed=(),
    adapting: bool = True,
) -> str:
    """Markdown report of a retraining run (outcomes from `regressor.pipeline`; `skipped`: the
    due adaptations that could not be made, `pipeline.AdaptSkipped`; `failed`: those that
    failed, `pipeline.AdaptFailed`; `adapting`: False when the run was asked not to adapt, so
    nothing was checked)."""
    champion_uri = f"models:/{app.registry.model_name}@{app.registry.champion_alias}"
    predict = predict_command(paths, champion_uri)
    parts = [
        "# textperf retraining report",
        "## Ingest",
        ingest_summary(ingested),
        "## Held-out later days",
        metrics_table(trained.metrics),
        bullet_list(training_summary(trained)),
    ]
    for outcome in adapted:
        parts += [
            f"## Few-shot adaptation to {code(outcome.task)}",
            f"{shots_used(outcome)}; method {code(outcome.method)}.{reference_cost(outcome)}"
            + intervals_used(outcome),
            metrics_table(
                adaptation_scores(outcome, "base, zero-shot", "from scratch on the same shots")
            ),
            adaptation_lineage(outcome),
            adaptation_gate(outcome),
        ]
    if skipped:
        parts += [
            "## Adaptations skipped",
            "\n".join(f"- {code(s.task)}: {plain(s.reason)}" for s in skipped),
        ]
    if failed:
        parts += [
            "## Adaptations failed",
            "\n".join(f"- {code(f.task)}: {plain(f.error)}" for f in failed),
            "The run ends failed; the steps above stand (the flow run's log has each failure's "
            "traceback).",
        ]
    if not adapting:
        parts.append("Adaptation off for this run (`adapt=False`): no variant was checked.")
    elif not adapted and not skipped and not failed:
        parts.append("No adaptation due: every variant is adapted from the current champion.")
    parts += [
        "## Wall time",
        timings_table(seconds),
        "## Use it",
        bullet_list(
            {
                "champion": code(champion_uri),
                **{code(a.task): code(a.use_uri) for a in adapted},
                "MLflow UI": ui_line(paths),
                "predict": code(predict),
            }
        ),
    ]
    return "\n\n".join(parts) + "\n"
