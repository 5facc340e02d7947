"""Models-from-code entry of the registered OTS model: MLflow *executes* this file when the model is loaded,
so loading a registry entry unpickles no code. Settings (tile, limits, device) come from ``model_config``."""

import mlflow

from pipelines.serving_pyfunc import OTSUpscaler

mlflow.models.set_model(OTSUpscaler())
