"""The error raised for checkpoint files that cannot be used, and the key report it carries."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch


class CheckpointError(ValueError):
    """A checkpoint that is missing, unreadable, or does not match the model it claims to hold."""


def key_mismatches(expected: Mapping[str, Sequence[int]], found: Mapping[str, Sequence[int]]) -> list[str]:
    """Missing, unexpected and mis-shaped keys, by name (empty when the two match)."""
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    wrong = [
        f"{k} has shape {tuple(found[k])}, expected {tuple(expected[k])}"
        for k in sorted(set(expected) & set(found))
        if tuple(found[k]) != tuple(expected[k])
    ]
    problems = []
    if missing:
        problems.append(f"missing key(s): {missing}")
    if unexpected:
        problems.append(f"unexpected key(s): {unexpected}")
    if wrong:
        problems.append("mis-shaped: " + "; ".join(wrong))
    return problems


def check_duplicates(genes: Sequence[str], where: str) -> None:
    """A vocabulary must list each gene once."""
    seen: set[str] = set()
    duplicates = sorted({g for g in genes if g in seen or seen.add(g)})
    if duplicates:
        raise CheckpointError(f"{where} lists duplicate genes: {duplicates[:10]}")


def tensor_problems(expected: Mapping[str, torch.dtype], found: Mapping[str, torch.Tensor]) -> list[str]:
    """Tensors (present in both) of another dtype than expected, and floating tensors holding NaN or
    infinite values, by name: a weight stored as int32 or a NaN would otherwise load silently."""
    problems = []
    wrong = [
        f"{k} is {found[k].dtype}, expected {expected[k]}"
        for k in expected
        if k in found and found[k].dtype != expected[k]
    ]
    if wrong:
        problems.append(
            "wrong dtype: " + "; ".join(wrong[:8]) + (f" (and {len(wrong) - 8} more)" if len(wrong) > 8 else "")
        )
    bad = [k for k, v in found.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        problems.append(
            "non-finite values (NaN or infinite) in: "
            + ", ".join(f"{k} ({int((~torch.isfinite(found[k])).sum()):,} of {found[k].numel():,})" for k in bad[:8])
            + (f" and {len(bad) - 8} more" if len(bad) > 8 else "")
        )
    return problems
