#!/usr/bin/env bash
# Install llmkit with the pretrained MiniLM-L6 (scripts/setup.sh minilm) and fine-tune it as a sentiment
# classifier on the project's own review data (configs/finetune/quickstart.yaml), offline. Prints accuracy.
#   bash scripts/quickstart.sh [overrides...]   e.g. train.num_train_epochs=2
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
bash "$here/setup.sh" minilm
source "$here/_python.sh"
cd "$root"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
exec "$PY" -m llmkit finetune configs/finetune/quickstart.yaml --overwrite "$@"
