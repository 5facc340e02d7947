"""One module per DVC stage; the only place wiring Ray, MLflow and DVC."""
