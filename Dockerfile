# bnserve serving image: grpcio + onnxruntime and the `server` package, nothing for training.
#
#   docker build -t bnserve .                                    # model mounted at run time
#   docker run -p 50051:50051 -p 9090:9090 -v "$PWD/demo:/models:ro" bnserve
#   docker build --build-arg MODEL=demo/model.onnx -t bnserve .  # model baked into the image
#
# Where no registry is reachable, build on a local base image instead (deploy/check-image.sh
# makes one with debootstrap): --build-arg BASE_IMAGE=localhost/python-base:3.11

ARG BASE_IMAGE=python:3.11-slim

# ---- requirements: the base dependencies listed in pyproject.toml ---------------------------
# A stage of its own, so edits elsewhere in pyproject.toml (extras, tool settings) leave the
# file below unchanged and the builder's dependency layer cached.
FROM ${BASE_IMAGE} AS requirements
WORKDIR /src
COPY pyproject.toml ./
RUN python3 -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
      > requirements.txt

# ---- builder: a venv with the base package (no train/test extras, no onnx) ------------------
FROM ${BASE_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python3 -m venv /opt/venv
WORKDIR /src
COPY --from=requirements /src/requirements.txt ./
COPY constraints.txt ./
RUN /opt/venv/bin/pip install --requirement requirements.txt --constraint constraints.txt

# Only the serving code goes in: without training/ and export/ in the context copy,
# setuptools' package discovery installs neither.
COPY pyproject.toml README.md ./
COPY bnserve/ bnserve/
COPY server/ server/
RUN /opt/venv/bin/pip install --no-deps . \
 && /opt/venv/bin/python -m pip uninstall --yes --quiet pip setuptools

# MODEL: optional path (inside the build context) of a model.onnx to bake in as /models/model.onnx.
ARG MODEL=""
COPY deploy/models/ /models/
RUN --mount=type=bind,source=.,target=/context \
    if [ -n "$MODEL" ]; then cp "/context/$MODEL" /models/model.onnx; fi

# ---- runtime: the base image + the venv, as a non-root user ----------------------------------
FROM ${BASE_IMAGE} AS runtime
RUN useradd --uid 10001 --user-group --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin bnserve
COPY --from=builder /opt/venv /opt/venv
COPY --from=builder --chown=10001:10001 /models /models
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp \
    BNSERVE_MODEL=/models/model.onnx \
    BNSERVE_MODEL_ROOT=/models \
    BNSERVE_HOST=0.0.0.0 \
    BNSERVE_PORT=50051 \
    BNSERVE_HTTP_PORT=8000 \
    BNSERVE_METRICS_PORT=9090
USER 10001:10001
# gRPC (native and v2), HTTP/REST v2, Prometheus metrics
EXPOSE 50051 8000 9090
# Asks grpc.health.v1 over the gRPC port (not a TCP poke): healthy only when SERVING.
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
  CMD ["python", "-m", "bnserve.server.clients.healthcheck"]
STOPSIGNAL SIGTERM
# Exec form: the server is PID 1 and receives SIGTERM itself (it drains, then exits 0).
ENTRYPOINT ["python", "-m", "bnserve.server"]
