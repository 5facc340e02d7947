# The project image: Ray at the tested version (= ray in requirements.lock), the locked dependencies (torch,
# torchvision, lpips, mlflow, ...) and the project. Used by infra/ray-cluster.yaml, infra/kuberay-*.yaml and
# `ray job submit` (the runtime env then carries only the code).
#   make image                    # docker build -t $(IMAGE) .
#   docker push $(IMAGE)
# The torch wheels in the lock bundle the CUDA 13.0 runtime: hosts need an NVIDIA driver >= 580.
ARG RAY_IMAGE=rayproject/ray:2.60.0-py311-gpu
FROM ${RAY_IMAGE}

WORKDIR /home/ray/ots
# Dependencies first (their layer is reused while only the code changes).
COPY --chown=ray:users requirements.lock ./
RUN pip install --no-cache-dir -r requirements.lock \
 && python -c "import ray, torch, torchvision, mlflow, lpips; assert ray.__version__ == '2.60.0', ray.__version__"
COPY --chown=ray:users pyproject.toml README.md ./
COPY --chown=ray:users ots ./ots
COPY --chown=ray:users pipelines ./pipelines
COPY --chown=ray:users infra ./infra
COPY --chown=ray:users configs ./configs
COPY --chown=ray:users params.yaml dvc.yaml ./
# The library is installed; `pipelines` (not installed, see pyproject.toml) is found through PYTHONPATH.
ENV PYTHONPATH=/home/ray/ots RAY_TRAIN_ENABLE_PRINT_PATCH=0
RUN pip install --no-cache-dir --no-deps . && ots --help >/dev/null && cd / && python -c "import pipelines.train"
# The entrypoint stays Ray's (the cluster launcher and KubeRay run `ray start`); jobs run
#   python -m pipelines.train --params infra/params.cluster.yaml
