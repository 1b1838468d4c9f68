"""The bench scripts' own plumbing (their measurements run outside CI): arguments and table rendering."""
import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "bench"


def test_awa1_bench_refuses_bad_epoch_candidates_before_any_work():
    for bad, says in (("3,x", "whole numbers"), ("0,3", ">= 1")):
        out = subprocess.run([sys.executable, str(BENCH / "awa1_lampert.py"), "--select-epochs", bad],
                             capture_output=True, text=True, timeout=300)
        assert out.returncode == 2 and says in out.stderr, out.stderr


def test_table_renders_a_bench_json_and_a_merged_gpu_session_file(tmp_path):
    sys.path.insert(0, str(BENCH))
    try:
        import table
    finally:
        sys.path.remove(str(BENCH))
    payload = {"methods": {"bsegn": {"T1": 26.24, "U": 19.1, "S": 12.6, "H": 15.04, "T1_std": 1.4, "U_std": 2.2,
                                     "S_std": 2.0, "H_std": 1.1, "seeds": 3, "epochs": 6},
                           "eszsl": {"T1": 20.8, "U": 17.9, "S": 8.6, "H": 11.6, "T1_std": 0.0, "U_std": 0.0,
                                     "S_std": 0.0, "H_std": 0.0, "seeds": 1}},
               "chosen_on_validation": {"bsegn": {"epochs": 6, "calibration_gamma": 12.0,
                                                "validation": {"T1": 20.44, "U": 13.7, "S": 19.8, "H": 16.19}}}}
    single = tmp_path / "one.json"
    single.write_text(json.dumps(payload))
    merged = tmp_path / "runs.json"
    merged.write_text(json.dumps({"awa1_main": payload}))
    for path in (single, merged):
        lines = table.rows(table.bench_payloads(path))
        assert lines[2] == "| bsegn | 26.2 ± 1.4 | 19.1 ± 2.2 | 12.6 ± 2.0 | 15.0 ± 1.1 | 6 | 12.0 | 20.4 / 16.2 |"
        assert lines[3] == "| eszsl | 20.8 | 17.9 | 8.6 | 11.6 |  |  |  |"
