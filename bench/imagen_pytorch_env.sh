#!/usr/bin/env bash
# Make bench/.venv-imagen: imagen-pytorch and minimagen side by side on one torch, for bench_imagen_pytorch.py.
#
# A separate environment because imagen-pytorch requires torchvision, and PyPI's torchvision does not run
# beside the CPU build of torch 2.13 that the project's own .venv holds; torch 2.14.1 with torchvision
# 0.29.1 (a CUDA build, ~5.5 GB, which also runs on a CPU) does. minimagen is installed into it as well,
# so both libraries run on the same torch, in one run of the benchmark. Nothing here downloads a model.
#
#     bash bench/imagen_pytorch_env.sh          # then: bench/.venv-imagen/bin/python bench/bench_imagen_pytorch.py
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
venv="$here/.venv-imagen"
python3 -m venv "$venv"
"$venv/bin/pip" install -q --upgrade pip
"$venv/bin/pip" install -q torch==2.14.1 torchvision==0.29.1
"$venv/bin/pip" install -q imagen-pytorch==2.1.0
"$venv/bin/pip" install -q -e "$(dirname "$here")"
"$venv/bin/python" -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__)"
