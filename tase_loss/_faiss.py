"""The one place that imports ``faiss`` (lazily) and scopes its thread count."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any, Optional


def import_faiss(purpose: str) -> Any:
    """Import faiss, or fail with an install hint that says what needed it."""
    try:
        import faiss
    except ImportError as error:  # pragma: no cover - exercised only without faiss
        raise ImportError(
            f"{purpose} need(s) FAISS: install it with `pip install faiss-cpu` "
            "(or faiss-gpu on a CUDA machine)"
        ) from error
    return faiss


@contextlib.contextmanager
def faiss_threads(faiss: Any, num_threads: Optional[int]) -> Iterator[None]:
    """Run the block with ``num_threads`` OpenMP threads in FAISS, then restore them."""
    threads_before = faiss.omp_get_max_threads()
    if num_threads is not None:
        faiss.omp_set_num_threads(num_threads)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(threads_before)
