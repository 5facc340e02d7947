"""Serving a trained map: the bounded HTTP server (``python -m pipelines.serving``) and the registered MLflow pyfunc
(``mlflow models serve``). One module a job:

* :mod:`~pipelines.serving.server` -- ``python -m pipelines.serving``: load a map and run the bounded server;
* :mod:`~pipelines.serving.app` -- that server's ASGI app (admission, deadlines, one-line JSON errors);
* :mod:`~pipelines.serving.limits` -- what one request may ask for (the defaults, ``ServeLimits``);
* :mod:`~pipelines.serving.payload` -- the request payload both servers share (base64, bytes, sizes);
* :mod:`~pipelines.serving.pyfunc` -- the MLflow pyfunc; :mod:`~pipelines.serving.model` its models-from-code entry;
* :mod:`~pipelines.serving.scoring_server` -- what the pyfunc must know about MLflow's scoring server;
* :mod:`~pipelines.serving.package` -- logging the pyfunc to MLflow (signature, requirements, code).

Registry URIs (``models:/name@alias``, ``runs:/``, run ids) are :mod:`pipelines.registry`.
"""
