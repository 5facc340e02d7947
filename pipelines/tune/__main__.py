"""``python -m pipelines.tune --params params.yaml``: the stage's door (:func:`pipelines.tune.driver.main`)."""

from pipelines.tune.driver import main

if __name__ == "__main__":
    raise SystemExit(main())
