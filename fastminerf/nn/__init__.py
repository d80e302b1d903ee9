"""Thin modules that own parameters and buffers and call the functional core in ``fastminerf.ops``."""
from .encoding import HashGridEncoding
from .occupancy import OccupancyGrid
from .torso import TorsoLayer

__all__ = ["HashGridEncoding", "OccupancyGrid", "TorsoLayer"]
