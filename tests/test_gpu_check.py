"""benchmarks/gpu_check.py, the prepared GPU device check, smoke-tested on CPU (--quick)."""
import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "gpu_check.py"


def test_gpu_check_runs_every_section_on_cpu():
    done = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--dataset", "synthetic"], capture_output=True, text=True, timeout=900,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    out = done.stdout
    assert done.returncode == 0, done.stderr[-2000:]
    assert "dataset: synthetic, 2700 training images" in out  # says which data it used
    assert "== 1. reference layers under bf16 autocast" in out
    assert "0 failed under bf16 but not in float32" in out
    assert "evonorm-b0" in out and "torch-bn-relu  eager" in out
    assert "K=2" in out and "--gpus-per-worker" in out
