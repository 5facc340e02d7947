"""The ``train`` and ``train_gan`` stages: the driver (:mod:`.driver`), its config (:mod:`.config`), the resume model
(:mod:`.resume`), the Ray Train worker loop (:mod:`.worker`) and rank 0's tracking (:mod:`.tracking`), the GAN
baseline's params (:mod:`.gan`) and the CLI door both stages share (:mod:`.stage`).

    python -m pipelines.train --params params.yaml [--fresh]
    python -m pipelines.train.gan --params params.yaml [--fresh]
"""
