# The project image: Ray at the tested version (= ray in the lock), the locked *runtime* dependencies (torch,
# torchvision, lpips, mlflow, dvc, ...; no test or lint tools: requirements-runtime.lock is requirements.lock
# without the dev and export extras) and the project, installed as the Makefile does (`--no-deps`: the lock is
# complete). Used by infra/ray-cluster.yaml, infra/kuberay-*.yaml and `ray job submit` (the runtime env then
# carries only the code). One Dockerfile, two variants (build arg VARIANT):
#   make image                    # VARIANT=gpu: docker build -t $(IMAGE) .
#   make image-cpu                # VARIANT=cpu: docker build --build-arg VARIANT=cpu -t $(IMAGE)-cpu .
#   docker push $(IMAGE)
# Both start from Ray's CPU image: on gpu the torch wheels of the lock bring the CUDA 13.0 runtime themselves
# (hosts need an NVIDIA driver >= 580; Ray's -gpu base would add a second CUDA), on cpu torch/torchvision come
# from PyTorch's CPU index at the locked versions and the CUDA wheels are left out.
ARG RAY_IMAGE=rayproject/ray:2.60.0-py311
FROM ${RAY_IMAGE}
ARG VARIANT=gpu
# The lock's CUDA wheels (torch's dependencies), left out of the cpu variant (tests/test_infra.py checks the list).
ARG CUDA_WHEELS="^(torch|torchvision|triton|cuda-[a-z-]+|nvidia-[a-z0-9-]+)=="
ARG TORCH_CPU_INDEX=https://download.pytorch.org/whl/cpu

WORKDIR /home/ray/ots
# Dependencies first (their layer is reused while only the code changes).
COPY --chown=ray:users requirements-runtime.lock ./
RUN set -eu; \
    case "$VARIANT" in \
      gpu) cp requirements-runtime.lock /tmp/requirements.txt ;; \
      cpu) grep -vE "$CUDA_WHEELS" requirements-runtime.lock > /tmp/requirements.txt; \
           pip install --no-cache-dir --no-deps --index-url "$TORCH_CPU_INDEX" \
             "torch==$(sed -n 's/^torch==//p' requirements-runtime.lock)+cpu" \
             "torchvision==$(sed -n 's/^torchvision==//p' requirements-runtime.lock)+cpu" ;; \
      *) echo "VARIANT must be gpu or cpu, not '$VARIANT'" >&2; exit 2 ;; \
    esac; \
    pip install --no-cache-dir --no-deps -r /tmp/requirements.txt; \
    rm /tmp/requirements.txt; \
    python -c "import ray, torch, torchvision, mlflow, lpips; assert ray.__version__ == '2.60.0', ray.__version__"
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
