# HyenaDNA pretraining/finetuning on GPU. PyTorch and CUDA come from the base image; `pip install .`
# adds only pure-Python/wheel dependencies (no source builds, no flash-attn).
#   docker build -t hyenadna .
#   docker run --gpus all --shm-size 8g -v $PWD/data:/workspace/hyenadna/data -v $PWD/outputs:/workspace/hyenadna/outputs \
#       hyenadna experiment=hg38_tiny_1k
FROM pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /workspace/hyenadna

COPY pyproject.toml README.md ./
COPY hyenadna ./hyenadna
RUN pip install --prefer-binary . && python -c "import hyenadna, lightning, hydra, pyfaidx"

COPY configs ./configs
COPY data ./data
COPY train.py finetune.py ./

ENTRYPOINT ["python", "train.py"]
