"""Argument checks shared by the ops' Python wrappers."""
from __future__ import annotations

import torch


def check_integers(name: str, t: torch.Tensor) -> None:
    """Refuse a floating-point (or complex) tensor where integers are expected: converting it with ``.long()``
    would truncate 1.7 to 1 without a word. Nor a boolean mask: ``.long()`` would read it as indices 0 and 1.
    Integer tensors of any width are the caller's to convert."""
    if t.is_floating_point() or t.is_complex():
        raise ValueError(f"{name} must be integers, got {t.dtype}: round or convert it to an integer tensor first")
    if t.dtype == torch.bool:
        raise ValueError(f"{name} must be integers, got torch.bool: a mask is not a list of indices (it would read "
                         f"as indices 0 and 1); take the indices it selects with .nonzero() first")
