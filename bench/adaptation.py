"""Few-shot adaptation on the demo fleet: does a held-out cell reach the trained cells' accuracy?

    .venv/bin/python bench/adaptation.py [--days 600] [--shots 500] [--test-days 60]

Everything runs through `regressor.pipeline`, as the nightly flow does, in a scratch `--out` dir:
generate a fleet of `--days` days per cell (the default cell has 150: too few for 500 shots),
ingest it, train and register the base model on every cell but the held-out one, adapt that
version to the held-out cell with `--shots` of its days (the most recent before its test days),
and score on the held-out cell's last `--test-days` days: base zero-shot, adapted, and the same
architecture trained from scratch on the same shots. `fallback_coverage` is what the zero-shot
fallback (`adaptation.zero_shot_fallback`: the base's weights, a scale fitted on the gate's shots)
covers of those days, printed whatever the gate decided: it is registered only on a refusal.

The base model's own figure is given two ways, both on the trained cells' test days:
- `base_spearman_pooled`: one Spearman over all cells' days (also ranks cells against each other);
- `base_spearman_within_cell`: the mean of each cell's own Spearman, like for like with the
  adapted model, which is scored inside one cell.

Prints `name: value` lines; the ratios `adapted_over_base_*` are the figure of issue #5.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from regressor import pipeline, registry
from regressor.adaptation import zero_shot_fallback
from regressor.config import AppConfig, load_app_config, load_source_config
from regressor.evaluation import within_task_spearman
from regressor.predictor import Predictor


def bench_config(args: argparse.Namespace) -> AppConfig:
    app = load_app_config(var_dir=args.out.resolve())
    updates = {
        "fleet": app.fleet.model_copy(update={"n_days": args.days}),
        "split": app.split.model_copy(update={"test_days": args.test_days}),
        # The from-scratch reference is one of this bench's figures, whatever conf says.
        "adapt": app.adapt.model_copy(
            update={"n_shots": args.shots, "from_scratch_reference": True}
        ),
        "model": args.model,
        "train": args.train,
    }
    return app.model_copy(update=updates)


def report(name: str, value: object) -> None:
    print(f"{name}: {value}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, default=600, help="days per cell in the fleet")
    parser.add_argument("--shots", type=int, default=500, help="held-out cell's training days")
    parser.add_argument("--test-days", type=int, default=60, help="days held out for scoring")
    parser.add_argument("--model", default="mini", help="conf/model/<name>.yaml")
    parser.add_argument("--train", default="adapt_bench", help="conf/train/<name>.yaml")
    parser.add_argument("--out", type=Path, default=Path("var/bench/adaptation"))
    args = parser.parse_args()

    app = bench_config(args)
    paths = app.paths.resolve()
    source = load_source_config(app.source)
    started = time.perf_counter()
    pipeline.generate(paths, app, source)
    pipeline.ingest(paths, source, pipeline.new_run_id())
    data = pipeline.load_dataset(paths, app, source)
    report("records", sum(len(ex) for ex in data.splits.values()))
    report("holdout_cell", data.holdout_task)
    # force: a rerun in the same --out measures its own training, not the earlier run's
    trained = pipeline.train_and_register(app, paths, data, force=True)
    report("base_train_steps", trained.fit.steps)
    test = data.splits["test"]
    base = registry.load_predictor(trained.uri)
    summary = base.predict_texts(test.texts, app.eval.num_samples, app.eval.temperature)
    pooled = trained.metrics["textperf"]["spearman"]
    within = within_task_spearman(test.tasks, test.targets, summary["median"])
    report("base_spearman_pooled", f"{pooled:.3f}")
    report("base_spearman_within_cell", f"{within:.3f}")
    report("lightgbm_spearman_pooled", f"{trained.metrics['lightgbm']['spearman']:.3f}")

    adapted = pipeline.adapt_version(app, paths, data, trained.version, force=True)
    report("n_shots", adapted.n_shots)
    report("n_test_days", len(data.splits["adapt_test"]))
    for name in ("zero_shot", "adapted", "from_scratch"):
        scores = getattr(adapted, name)
        report(f"{name}_spearman", f"{scores['spearman']:.3f}")
        report(f"{name}_mape", f"{scores['mape']:.2f}")
        report(f"{name}_coverage", f"{scores['interval_coverage']:.3f}")  # q10..q90, nominal 0.8
    rho = adapted.adapted["spearman"]
    report("adapted_over_base_pooled", f"{rho / pooled:.3f}")
    report("adapted_over_base_within_cell", f"{rho / within:.3f}" if within else "nan")
    margin = rho - adapted.from_scratch["spearman"]
    report("adapted_minus_from_scratch", f"{margin:.3f}")
    # The registry's gate decided on the shots kept out of training, never on the days above.
    report("gate_promoted", int(adapted.promoted))
    report("adapted_intervals", adapted.intervals)  # what its served intervals rest on
    for name in ("zero_shot", "adapted"):
        report(f"gate_{name}_spearman", f"{adapted.validation[name]['spearman']:.3f}")
    report_fallback(app, data, base, adapted.fallback)
    report("wall_s", f"{time.perf_counter() - started:.0f}")


def report_fallback(
    app: AppConfig,
    data: pipeline.Dataset,
    base: Predictor,
    registered: pipeline.ZeroShotFallback | None,
) -> None:
    """The zero-shot fallback's coverage of the test days: the registered one's (the gate
    refused), else one fitted here as a refusal would have."""
    if registered is not None:
        report("fallback_coverage", f"{registered.scores['interval_coverage']:.3f}")
        report("fallback_intervals", registered.intervals)
        return
    fallback = zero_shot_fallback(base, pipeline.task_shots(app, data)[2], app.eval)
    if fallback is None:
        report("fallback_intervals", "none: eval.conformal off, or under 9 finite gate predictions")
        return
    scores = pipeline.evaluate_model(fallback[0], data.splits["adapt_test"], app.eval)[0]
    report("fallback_coverage", f"{scores['interval_coverage']:.3f}")
    report("fallback_intervals", fallback[1])


if __name__ == "__main__":
    main()
