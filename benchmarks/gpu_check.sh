#!/usr/bin/env bash
# One pass over pycomm's GPU datatype path on a GPU machine, run from the repository root: build and
# install (CUDA part for sm_90; the MPI parts off, whatever MPI the machine has), the datatype tests, the GPU pack benchmark and a quick
# `pycomm tune`. Every log and result lands in "$OUT" (flat); each step has its own time limit and a
# failing step does not stop the later ones. Whole run: about 6 minutes at most.
set -x
set -o pipefail
export PYTHONUNBUFFERED=1
# Only pycomm's own pytest plugin: a GPU image's other plugins (and the frameworks they import) stay out.
export PYTEST_DISABLE_PLUGIN_AUTOLOAD=1
OUT="${OUT:-/tmp/pycomm-gpu-check}"
mkdir -p "$OUT"
PYTHON="${PYTHON:-$(command -v python3 || command -v python)}"
# Run from outside the checkout's import path: `python -P` keeps ./pycomm (no compiled core) off sys.path.
RUN=("$PYTHON" -P -X faulthandler)
export PYCOMM_CACHE_DIR=/tmp/pycomm-gpu-cache

status() { echo "== $(date +%T) $*" | tee -a "$OUT/steps.txt"; }

status "machine"
{ timeout 15 nvidia-smi; "$PYTHON" --version; nvcc --version; cmake --version;
  "$PYTHON" -c "import cupy; print('cupy', cupy.__version__)"; } > "$OUT/machine.txt" 2>&1

status "build + install"
# The distribution's compiler, not a toolchain whose g++ links libstdc++ statically (seen in a GPU image:
# /opt/gcc): an extension module with its own copy of libstdc++ crashes in its first std::ostringstream
# and corrupts the C++ runtime of every library loaded after it (torch among them).
if [ -x /usr/bin/g++ ] && [ -x /usr/bin/gcc ]; then
  export CC=/usr/bin/gcc CXX=/usr/bin/g++ CUDAHOSTCXX=/usr/bin/g++
fi
timeout 200 "$PYTHON" -m pip install --no-build-isolation --no-deps -v . \
  -C build-dir=/tmp/pycomm-gpu-build -C cmake.define.CMAKE_CUDA_ARCHITECTURES=90-real \
  -C cmake.define.PYCOMM_MPI=OFF \
  > "$OUT/build.log" 2>&1
echo "build rc=$?" | tee -a "$OUT/steps.txt"
(cd "$OUT" && timeout 30 "${RUN[@]}" -m pycomm info --json "$OUT/info.json") >> "$OUT/machine.txt" 2>&1

status "tests"
# The MPI comparisons (test_datatype_mpi.py) need MPICH's mpiexec, which this machine need not have.
tests=(tests/test_datatype_cuda.py tests/test_datatype.py)
timeout 100 "${RUN[@]}" -m pytest -x -q -p no:cacheprovider "${tests[@]}" \
  2>&1 | tee "$OUT/tests.log" | tail -40
echo "tests rc=$?" | tee -a "$OUT/steps.txt"
# Without -x, so that one failure does not hide the state of the other GPU tests.
timeout 45 "${RUN[@]}" -m pytest -q -p no:cacheprovider -rs tests/test_datatype_cuda.py \
  > /tmp/pycomm-tests-cuda-all.log 2>&1
echo "cuda tests (all) rc=$?" | tee -a "$OUT/steps.txt"
cat /tmp/pycomm-tests-cuda-all.log >> "$OUT/tests.log"
tail -5 /tmp/pycomm-tests-cuda-all.log

# torch's CUDA tensors through backend "pycomm" (staged through the host): MPI jobs, so only where
# the mpich wheel's mpiexec is installed beside this interpreter.
if [ -x "$(dirname "$(command -v "$PYTHON")")/mpiexec" ]; then
  timeout 120 "${RUN[@]}" -m pytest -q -p no:cacheprovider -rs tests/test_torch_cuda.py \
    >> "$OUT/tests.log" 2>&1
  echo "torch cuda tests rc=$?" | tee -a "$OUT/steps.txt"
fi

status "benchmark"
(cd "$OUT" && timeout 100 "${RUN[@]}" -m pycomm.benchmarks.pack_gpu --json "$OUT/pack_gpu.json") \
  2>&1 | tee "$OUT/pack_gpu.log" | tail -60
echo "benchmark rc=$?" | tee -a "$OUT/steps.txt"

status "tune"
(cd "$OUT" && timeout 40 "${RUN[@]}" -m pycomm tune --quick --json /tmp/pycomm-tune.json) > "$OUT/tune.log" 2>&1
echo "tune rc=$?" | tee -a "$OUT/steps.txt"
(cd "$OUT" && timeout 20 "${RUN[@]}" -m pycomm tune --quick --no-save) >> "$OUT/tune.log" 2>&1
tail -20 "$OUT/tune.log"
status "done"
cat "$OUT/steps.txt"
