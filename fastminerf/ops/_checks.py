"""Argument checks shared by the ops' Python wrappers."""
from __future__ import annotations

import torch


def check_integers(name: str, t: torch.Tensor) -> None:
    """Refuse a floating-point (or complex) tensor where integers are expected: converting it with ``.long()``
    would truncate 1.7 to 1 without a word. Integer tensors of any width are the caller's to convert."""
    if t.is_floating_point() or t.is_complex():
        raise ValueError(f"{name} must be integers, got {t.dtype}: round or convert it to an integer tensor first")
