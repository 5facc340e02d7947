"""``python -m pipelines.train``: the DVC stage ``train`` (:mod:`pipelines.train.driver`)."""

from pipelines.train.driver import main

raise SystemExit(main())
