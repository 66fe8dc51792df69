"""Label-stratified greedy draw of patient groups into splits with exam quotas (docs/design.md §3.4).

The idea of scikit-learn's StratifiedGroupKFold with unequal bins of fixed size: units (patients, or exams)
carrying the rarest classes are placed first; each goes to a bin that still has room, preferring a bin that
lacks the rarest of its classes (test and val before train), then the bin whose classes are furthest below
its share of the pool. Quotas keep the semantics of `splits._take`: fill without exceeding, then one more unit
if a bin is still short.
"""
from __future__ import annotations

import numpy as np

_EVAL = ("test", "val")


def stratified_take(order: list, size: dict, counts: dict, quota: dict, spare: int) -> dict[str, list]:
    """Bins of `quota` (name -> exams, e.g. test/val/train) -> units drawn into them.

    `order`: the units in seeded order (ties keep it); `size`: unit -> exams it fills; `counts`: unit ->
    positive images per class. `spare`: exams of the pool beyond the quotas; they form a last bin ("rest",
    left to the caller) so that a large pool is drawn from in its own class proportions, not rare-first.
    """
    if not order:
        return {name: [] for name in quota}
    names = [*quota, "rest"]
    cap = np.array([quota[b] for b in quota] + [max(spare, 0)], float)
    sizes = np.array([size[u] for u in order], float)
    v = np.array([np.asarray(counts[u], float) for u in order])
    has = v > 0
    freq = has.sum(0)
    target = np.outer(cap / max(cap.sum(), 1.0), v.sum(0))        # bins x classes: each bin's share
    weight = 1.0 / np.maximum(freq, 1)                             # a rare class counts more
    n = np.zeros(len(names))
    cnt = np.zeros((len(names), v.shape[1]))
    where = np.full(len(order), -1)

    def score(i: int, b: int) -> tuple:
        # Filling the gap of the rarest class comes first (test and val before train, never "rest"): a common
        # class a bin lacks now will still reach it later.
        lack = weight[has[i] & (cnt[b] == 0)]
        gap = float(lack.max()) if lack.size and names[b] != "rest" else 0.0
        w = weight * has[i]
        fill = float((w * (cnt[b] + v[i]) / np.maximum(target[b], 1e-9)).sum() / w.sum()) if w.any() else 0.0
        return (gap, gap > 0 and names[b] in _EVAL, -fill, -(n[b] + sizes[i]) / max(cap[b], 1.0), -b)

    def place(i: int, b: int) -> None:
        if where[i] >= 0:
            n[where[i]] -= sizes[i]
            cnt[where[i]] -= v[i]
        where[i] = b
        n[b] += sizes[i]
        cnt[b] += v[i]

    rarity = np.where(has, freq, np.iinfo(np.int64).max).min(1)
    ranked = np.argsort(rarity, kind="stable")
    for i in ranked:
        fits = [b for b in range(len(names)) if n[b] + sizes[i] <= cap[b]]
        if fits:
            place(i, max(fits, key=lambda b: score(i, b)))
    rest = len(names) - 1
    for b in range(rest):  # packing left a bin short: fill it from units not drawn into a quota bin
        while n[b] < cap[b]:
            free = [i for i in ranked if where[i] in (-1, rest)]
            fit = [i for i in free if n[b] + sizes[i] <= cap[b]]
            if not fit:
                if free:  # one more unit, like `_take`; the smallest, to overshoot least
                    place(min(free, key=lambda i: sizes[i]), b)
                break
            place(max(fit, key=lambda i: score(i, b)), b)
    return {name: [order[i] for i in np.flatnonzero(where == b)] for b, name in enumerate(names[:-1])}
