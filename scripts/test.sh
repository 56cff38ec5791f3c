#!/usr/bin/env bash
# Every test: pytest over tests/ and nbval over notebooks/ (outputs compared with the committed
# ones). Installs nothing: the README's first command set up .venv.
set -euo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/python -m pytest --nbval --nbval-current-env -p no:cacheprovider "$@"
