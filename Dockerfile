# CUDA image with jepa as the entry point:
#   docker build -t jepa .
#   docker run --gpus all -v $PWD/runs:/workspace/runs jepa train trainer=gpu experiment=demo
# The base image brings CUDA and PyTorch; the project's other dependencies are installed with the pins from
# constraints.txt, except torch/torchvision/CUDA libraries, which come from the base image.
ARG BASE_IMAGE=pytorch/pytorch:2.9.1-cuda12.8-cudnn9-runtime
FROM ${BASE_IMAGE}

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    JEPA_RUNS_DIR=/workspace/runs \
    JEPA_DATA_DIR=/workspace/data

WORKDIR /opt/jepa-platform
COPY pyproject.toml constraints.txt README.md ./
COPY jepa_platform ./jepa_platform
COPY data_modules ./data_modules
COPY conf ./conf

RUN grep -v -E '^(torch|torchvision|triton|nvidia-|cuda-)' constraints.txt > /tmp/constraints-no-torch.txt \
 && python -m pip install -c /tmp/constraints-no-torch.txt -e . \
 && jepa --version

WORKDIR /workspace
ENTRYPOINT ["jepa"]
CMD ["--help"]
