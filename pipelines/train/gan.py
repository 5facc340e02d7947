"""DVC stage ``train_gan``: the content-regularized GAN baseline, trained by the same driver on the same budget.

    python -m pipelines.train.gan --params params.yaml [--fresh]

params.yaml's ``baseline:`` section is deep-merged over ``model``/``solver``/``train`` (typically
``solver.kind: gan`` with its λ and gradient penalty, WGAN-GP's Adam betas, and its own ``train.output_dir``),
then :func:`pipelines.train.run` trains it exactly as the OTS map: same data, crops, steps, validation and
selection by val SWD. Same budget: with the same ``steps`` and ``k_T`` both solvers make (k_T + 1) x steps
network updates on the same number of crops (OTS: k_T map + 1 potential update per step; the GAN: k_T critic
+ 1 map update). ``evaluate`` then puts bicubic, OTS and the GAN side by side.
"""

from __future__ import annotations

from ots.errors import ConfigError


def baseline_params(doc: dict) -> dict:
    """params with the ``baseline`` section merged over it (the section itself removed)."""
    from pipelines.params import deep_merge

    over = doc.get("baseline")
    if not isinstance(over, dict) or not over:
        raise ConfigError("params.yaml has no `baseline:` section (the GAN's solver/train overrides)")
    from ots.params_schema import check_keys

    # its sections' own keys are checked after the merge, by the train stage's resolve
    check_keys(over, {k: None for k in ("model", "solver", "train", "seed")}, "baseline")
    merged = deep_merge({k: v for k, v in doc.items() if k != "baseline"}, over)
    if merged.get("train", {}).get("output_dir") == (doc.get("train") or {}).get("output_dir"):
        raise ConfigError("baseline.train.output_dir must differ from train.output_dir (it would overwrite the map)")
    return merged


def main(argv: list[str] | None = None) -> int:
    from pipelines.train.driver import run
    from pipelines.train.stage import stage

    return stage("train_gan", __doc__, baseline_params, argv, ("mlflow_run_id", "steps", "best_checkpoint", "wall_s"),
                 run=run, module="pipelines.train.gan")


if __name__ == "__main__":
    raise SystemExit(main())
