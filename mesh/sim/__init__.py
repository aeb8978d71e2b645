"""Deterministic simulation of mesh cores: a virtual clock and a fake network."""

from mesh.sim.network import SimNetwork, SimNode

__all__ = ["SimNetwork", "SimNode"]
