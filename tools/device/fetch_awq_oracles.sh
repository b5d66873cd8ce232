#!/bin/bash
# Here, where PyPI is reachable: the AutoAWQ 0.2.9 oracle stack (tools/requirements-autoawq.txt:
# transformers 4.51 and friends as wheels, AutoAWQ itself — an sdist only — as the package
# tools/install-deps.sh installed into .venv/autoawq) into .devdeps/wheels, for
# tools/device/awq_loaders.sh on a GPU machine without a registry.
set -euo pipefail
cd "$(dirname "$0")/../.."
[ -d .venv/autoawq/awq ] || { echo "run tools/install-deps.sh first (it installs .venv/autoawq)"; exit 1; }
mkdir -p .devdeps/wheels
grep -v -e '^#' -e '^autoawq' tools/requirements-autoawq.txt > .devdeps/wheels/requirements.txt
.venv/bin/pip download -q --no-deps --only-binary=:all: -d .devdeps/wheels -r .devdeps/wheels/requirements.txt
tar -czf .devdeps/wheels/autoawq.tar.gz -C .venv/autoawq awq autoawq-0.2.9.dist-info
ls .devdeps/wheels
