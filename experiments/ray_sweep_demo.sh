#!/usr/bin/env bash
# A two-job router-rl sweep on a local Ray instance through Hydra's Ray launcher, with nested MLflow runs.
# Needs the ray extra in its own environment (Hydra's Ray launcher pins cloudpickle<3):
#   python -m venv .venv-ray && . .venv-ray/bin/activate && pip install torch==2.13.0 && pip install -e '.[ray]'
set -euo pipefail
work=$(mktemp -d)
cd "$work"
router-rl train -m debug=default policy=linucb,zero_router train.steps=160 data.max_prompts=24 \
  'evaluation.cost_weights=[0,1]' export.enabled=false hydra/launcher=ray '+hydra.launcher.ray.init.num_cpus=2'
python - <<'PY'
from mlflow.tracking import MlflowClient
client = MlflowClient(tracking_uri="sqlite:///mlflow.db")
runs = client.search_runs([client.get_experiment_by_name("router-rl").experiment_id])
for r in runs:
    print(f"{r.info.run_name[:50]:<52} {r.info.status:<9} parent={r.data.tags.get('mlflow.parentRunId')}")
assert sum(1 for r in runs if r.data.tags.get("mlflow.parentRunId")) == 2, "expected two nested job runs"
PY
