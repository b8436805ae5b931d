# One image for every role of Activation Lab: the API (uvicorn), CPU and GPU workers, migrations.
#   docker build -t actlab .                                   # torch from PyPI: CUDA included, runs on CPU too
#   docker build -t actlab:cpu --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu .   # CPU only, smaller
# docker-compose.yml starts the roles with different commands.
FROM python:3.11-slim

ARG TORCH_INDEX_URL=https://pypi.org/simple
# The same ranges as pyproject.toml, so `pip install .` below keeps this torch.
ARG TORCH_SPEC="torch>=2.9,<=2.14.1"
ARG TORCHVISION_SPEC="torchvision>=0.24,<=0.29.1"

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /opt/actlab

# torch first and alone: the largest layer, rebuilt only when the torch pins change.
RUN pip install --index-url "${TORCH_INDEX_URL}" "${TORCH_SPEC}" "${TORCHVISION_SPEC}"

COPY pyproject.toml README.md ./
COPY actlab ./actlab
COPY app ./app
COPY worker ./worker
COPY migrations ./migrations
RUN pip install .

# An unprivileged user owning only its data folder (datasets, checkpoints, the embedded mode's files).
RUN useradd --create-home --uid 10001 --user-group actlab \
    && mkdir -p /data/datasets /data/checkpoints \
    && chown -R actlab:actlab /data
USER actlab
WORKDIR /data

# REMAP_SIGTERM: SIGTERM (docker stop) is a cold shutdown for workers, so running runs go back to the
# queue after ACTLAB_WORKER_SOFT_SHUTDOWN_TIMEOUT seconds instead of after the visibility timeout.
# NVIDIA_DRIVER_CAPABILITIES: what the NVIDIA container toolkit mounts for a GPU container (python:3.11-slim is
# no CUDA base image): compute for torch, utility for nvidia-smi, which the worker uses to report its GPU.
ENV ACTLAB_DATA_DIR=/data/datasets \
    ACTLAB_CHECKPOINT_DIR=/data/checkpoints \
    REMAP_SIGTERM=SIGQUIT \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility

EXPOSE 8000

# Without a command: the embedded service (SQLite + folder broker + one worker) on all interfaces.
CMD ["actlab", "serve", "--host", "0.0.0.0", "--port", "8000"]
