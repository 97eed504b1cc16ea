"""``benchmarks/weight_sync.py --engine jax`` end to end: it starts a jax-engine server, pushes the
tiny model over each transport and writes a result whose bytes match the checkpoint."""

import json
import os
import pathlib
import struct
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
TINY = ROOT / "r1jax" / "assets" / "tiny_base"


def _tensor_bytes(path: pathlib.Path) -> int:
    """Bytes of the tensors of a safetensors file, read from its header (u64 length, then JSON)."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    return sum(end - begin for k, v in header.items() if k != "__metadata__" for begin, end in [v["data_offsets"]])


@pytest.mark.slow
def test_jax_weight_sync_runs_end_to_end_on_the_tiny_model(tmp_path):
    out = tmp_path / "sync.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run(
        [sys.executable, "benchmarks/weight_sync.py", "--engine", "jax", "--model", str(TINY), "--name", "test",
         "--repeats", "1", "--out", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads(out.read_text())
    expected = _tensor_bytes(TINY / "model.safetensors")
    assert expected > 0
    assert (result["engine"], result["repeats"], result["server_exit_code"]) == ("jax", 1, 0)
    assert result["bytes"] == expected
    assert set(result["transports"]) == {"grpc", "safetensors"} and "nccl" in result["not_measured"]
    for name, t in result["transports"].items():
        assert t["bytes"] == expected, name
        assert len(t["all_s"]) == 1 and t["all_s"][0] > 0 and t["median_s"] > 0 and t["gb_per_s"] > 0, name
    assert result["load_avg_1min"]["before"] >= 0 and result["load_avg_1min"]["after"] >= 0
    assert result["machine"]["cpu_count"] >= 1
