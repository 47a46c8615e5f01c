"""import_faiss: FAISS's OpenBLAS gets the kernels of this CPU, a user's choice wins, nothing leaks."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPT = """
import json, os
import torch
from threadpoolctl import threadpool_info
from tase_loss._faiss import OPENBLAS_CORES, import_faiss
import_faiss("the test")
pools = [pool for pool in threadpool_info() if pool["internal_api"] == "openblas" and "faiss" in pool["filepath"]]
print(json.dumps({
    "variable": os.environ.get("OPENBLAS_CORETYPE"),
    "cores": [pool.get("architecture") for pool in pools],
    "expected": OPENBLAS_CORES.get(torch.backends.cpu.get_cpu_capability()),
}))
"""


def _in_a_fresh_process(script: str, **variables: str) -> dict:
    """Run ``script`` in a new interpreter (no OPENBLAS_CORETYPE unless given) and parse its JSON."""
    env = {key: value for key, value in os.environ.items() if key != "OPENBLAS_CORETYPE"}
    env.update(PYTHONPATH=str(REPO), **variables)
    completed = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True)
    return json.loads(completed.stdout)


def test_faiss_openblas_is_loaded_with_the_kernels_of_this_cpu_and_the_variable_does_not_leak():
    result = _in_a_fresh_process(SCRIPT)
    assert result["variable"] is None
    if not result["cores"] or result["expected"] is None:
        pytest.skip(f"no OpenBLAS bundled with faiss here, or no AVX2 ({result})")
    assert result["cores"] == [result["expected"]]


def test_a_user_set_openblas_coretype_is_kept():
    result = _in_a_fresh_process(SCRIPT, OPENBLAS_CORETYPE="Prescott")
    assert result["variable"] == "Prescott"
    assert result["cores"] in ([], ["Prescott"])


PREIMPORTED = """
import json, os, warnings
import torch
os.environ["OPENBLAS_CORETYPE"] = "Prescott"  # the generic kernels, as an unknown CPU gets them
import faiss
if os.environ.get("KEEP_CORETYPE") != "1":
    del os.environ["OPENBLAS_CORETYPE"]
from tase_loss._faiss import OPENBLAS_CORES, _loaded_openblas_core, import_faiss
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    assert import_faiss("the test") is faiss and import_faiss("the test again") is faiss
print(json.dumps({
    "messages": [str(warning.message) for warning in caught],
    "loaded": _loaded_openblas_core(),
    "expected": OPENBLAS_CORES.get(torch.backends.cpu.get_cpu_capability()),
}))
"""


def test_faiss_imported_first_with_the_generic_kernels_is_warned_about_once():
    result = _in_a_fresh_process(PREIMPORTED)
    if result["loaded"] is None or result["expected"] is None:
        pytest.skip(f"no OpenBLAS bundled with faiss here, or no AVX2 ({result})")
    assert result["loaded"] == "Prescott"
    assert len(result["messages"]) == 1, result
    assert f"Set OPENBLAS_CORETYPE={result['expected']}" in result["messages"][0]


def test_no_warning_where_the_user_chose_the_kernels():
    result = _in_a_fresh_process(PREIMPORTED, KEEP_CORETYPE="1")
    assert result["messages"] == []
