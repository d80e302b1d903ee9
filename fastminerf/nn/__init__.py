"""Thin modules that own parameters and buffers and call the functional core in ``fastminerf.ops``."""
from .encoding import HashGridEncoding

__all__ = ["HashGridEncoding"]
