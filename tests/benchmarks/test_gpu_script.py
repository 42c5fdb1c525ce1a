"""``benchmarks/gpu.py --tiny`` runs on CPU and writes one JSON row per cell, none an error."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_gpu_script_tiny(tmp_path):
    out = tmp_path / "gpu.json"
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import gpu
    finally:
        sys.path.pop(0)
    # One cell of each kind, bfloat16 weights (the accelerator path; float32 logits).
    gpu.main(["--tiny", "--models", "llama-tiny", "--n", "2", "--prompts", "8", "--out", str(out)])
    res = json.loads(out.read_text())
    rows = res["rows"]
    assert len(rows) == 2 and not res["skipped"]  # {decode, smc}
    assert res["dtype"] == "bfloat16"
    assert all("error" not in r for r in rows), [r["error"] for r in rows if "error" in r]
    for r in rows:
        assert r["tok_s"] > 0 and r["compile_s"] >= 0
    assert {r["what"] for r in rows} == {"decode", "smc"}
    assert all(r["xla_bytes"] for r in rows if r["what"] == "decode")
