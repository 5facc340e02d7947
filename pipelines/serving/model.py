"""Models-from-code entry of the registered OTS model: MLflow *executes* this file when the model is loaded,
so loading a registry entry unpickles no code (the logged model holds it as ``model.py``, next to ``MLmodel``).
Settings (tile, limits, device) come from ``model_config``; the model is :mod:`pipelines.serving.pyfunc`."""

import mlflow

from pipelines.serving.pyfunc import OTSUpscaler

mlflow.models.set_model(OTSUpscaler())
