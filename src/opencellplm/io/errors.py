"""The error raised for checkpoint files that cannot be used, and the key report it carries."""

from __future__ import annotations

from collections.abc import Mapping, Sequence


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
