"""The one comparison helper: NaN/inf first, then max abs / max rel / relative RMS and the first bad index."""

from __future__ import annotations

import numpy as np

# Tolerances per (dtype, what is compared); each entry is (atol, rtol) applied elementwise as
# |a - e| <= atol + rtol * |e|.
TOLERANCES = {
    ("float32", "gdn-core"): (1e-6, 1e-5),
    ("float32", "logits"): (1e-5, 1e-4),
}


def to_numpy(x) -> np.ndarray:
    if hasattr(x, "detach"):  # torch
        x = x.detach().float().numpy()
    return np.asarray(x, dtype=np.float64)


def report(actual, expected) -> dict[str, float]:
    a, e = to_numpy(actual), to_numpy(expected)
    diff = np.abs(a - e)
    return {
        "max_abs": float(diff.max(initial=0.0)),
        "max_rel": float((diff / np.maximum(np.abs(e), 1e-30)).max(initial=0.0)),
        "rel_rms": float(np.sqrt((diff**2).mean()) / max(np.sqrt((e**2).mean()), 1e-30)) if e.size else 0.0,
        "scale": float(np.abs(e).max(initial=0.0)),
    }


def assert_close(name: str, actual, expected, *, atol: float, rtol: float = 0.0) -> dict[str, float]:
    """Fail (never warn) unless |actual - expected| <= atol + rtol * |expected| everywhere."""
    a, e = to_numpy(actual), to_numpy(expected)
    assert a.shape == e.shape, f"{name}: shape {a.shape} != expected {e.shape}"
    assert np.isfinite(a).all(), f"{name}: {np.count_nonzero(~np.isfinite(a))} non-finite values"
    assert np.isfinite(e).all(), f"{name}: reference has non-finite values"
    stats = report(a, e)
    bad = np.abs(a - e) > atol + rtol * np.abs(e)
    if bad.any():
        idx = np.unravel_index(np.argmax(bad), bad.shape)
        raise AssertionError(
            f"{name}: {np.count_nonzero(bad)} of {bad.size} elements out of tolerance (atol {atol}, rtol {rtol}); "
            f"first at {tuple(int(i) for i in idx)}: {a[idx]!r} vs {e[idx]!r}; "
            + ", ".join(f"{k} {v:.3g}" for k, v in stats.items())
        )
    return stats


def assert_close_to_scale(name: str, actual, expected, *, rel: float) -> dict[str, float]:
    """max |actual - expected| <= rel * max |expected| (for logits, whose small entries carry no meaning)."""
    stats = report(actual, expected)
    return assert_close(name, actual, expected, atol=rel * stats["scale"])
