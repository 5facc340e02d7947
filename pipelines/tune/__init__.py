"""The DVC stage ``tune`` (``python -m pipelines.tune --params params.yaml``): a Ray Tune (ASHA) search.

:mod:`~pipelines.tune.driver` drives the search, :mod:`~pipelines.tune.space` validates the ``tune:`` section
and its space, :mod:`~pipelines.tune.trial` is one trial, :mod:`~pipelines.tune.report` records the search.
"""
