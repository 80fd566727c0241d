"""scripts/gpu_check.sh on a machine without CUDA: it refuses before installing or writing anything."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "gpu_check.sh"


def test_without_cuda_it_refuses_with_exit_2_and_installs_nothing(tmp_path):
    calls = tmp_path / "python-calls.txt"
    wrapper = tmp_path / "python"  # logs every interpreter call, so a pip install would show
    wrapper.write_text(f'#!/bin/sh\necho "$@" >> {calls}\nexec {sys.executable} "$@"\n')
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR)
    wheels = tmp_path / "wheels"
    env = {**os.environ, "PYTHON": str(wrapper), "LLMKIT_GPU_WHEELS": str(wheels), "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    assert "CUDA is not available" in done.stderr and "Nothing was installed" in done.stderr
    assert done.stdout == ""
    logged = calls.read_text().splitlines()
    assert len(logged) == 1 and "torch.cuda.is_available()" in logged[0]  # the probe, and no pip
    assert not wheels.exists()
