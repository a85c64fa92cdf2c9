"""Energy kernels: Triton on CUDA, PyTorch references elsewhere (DESIGN.md §5).

The rest of the package calls only the dispatching entry points below.
"""

from .dispatch import BACKENDS, get_backend, set_backend, triton_available, use_backend
from .reference import ErsmEnergy, ersm_energy, gibbs_sweep, population_energy

__all__ = [
    "BACKENDS",
    "ErsmEnergy",
    "ersm_energy",
    "get_backend",
    "gibbs_sweep",
    "population_energy",
    "set_backend",
    "triton_available",
    "use_backend",
]
