#!/usr/bin/env bash
# Every test: pytest over tests/ and nbval over notebooks/ (outputs compared with the committed
# ones). Installs nothing: the README's first command set up .venv.
#
# 1. Strict, on the CPU (MINIPEFT_DEVICE=cpu, even on a GPU machine): every test, and every
#    notebook cell's output must equal the committed one.
# 2. Only on a machine with a CUDA GPU, and only when no arguments narrow the run: the
#    notebooks again on the GPU (MINIPEFT_DEVICE=cuda) with --nbval-lax, which checks that
#    every cell runs and every take-away assertion holds, not the printed digits (GPU
#    kernels round differently from the CPU's).
set -euo pipefail
cd "$(dirname "$0")/.."
MINIPEFT_DEVICE=cpu .venv/bin/python -m pytest --nbval --nbval-current-env -p no:cacheprovider "$@"
if [ "$#" -eq 0 ] && .venv/bin/python -c "import sys, torch; sys.exit(not torch.cuda.is_available())"; then
    MINIPEFT_DEVICE=cuda .venv/bin/python -m pytest --nbval-lax --nbval-current-env -p no:cacheprovider notebooks/
fi
