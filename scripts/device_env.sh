# Sourced on the GPU machine (device tool), which has torch but no registry: installs the carried
# wheels (.whl: torchrec, fbgemm-gpu-cpu, tensordict, mlflow-skinny + sqlalchemy/alembic, pydantic,
# ...) into /tmp/site and puts this checkout on the path. See benchmarks/RESULTS.md for the list.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || return 1
export PYTHONPATH=/tmp/site:$PWD PYTHONWARNINGS=ignore PYTHONUNBUFFERED=1
