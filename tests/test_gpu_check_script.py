"""``bench/gpu_check.sh`` on a machine without CUDA: it says so and exits 2 without writing a result (the CUDA
paths stay unproven). Its checks themselves need a GPU; ``--device cpu`` rehearses them (bench/README.md)."""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_without_cuda_exits_2_and_writes_nothing(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: run bash bench/gpu_check.sh itself")
    p = subprocess.run(["bash", str(ROOT / "bench" / "gpu_check.sh"), "--out", str(tmp_path / "gpu")],
                       capture_output=True, text=True, timeout=120, check=False)
    assert p.returncode == 2, p.stderr
    assert "no CUDA device" in p.stderr and "unproven" in p.stderr
    assert not (tmp_path / "gpu").exists()
