"""pccd — point-cloud crystal diffusion (Li et al., arXiv 2401.13192) for laptop CPUs.

Quick use::

    from pccd import load_pretrained
    structures = load_pretrained().sample(["Mg", "Mn", "O"], n=10, seed=0)
"""

import os

# On a 2-core machine that is also doing other work, OpenMP threads that spin while waiting
# make a torch step ~25× slower (16.5 s instead of 0.67 s per training step, measured here);
# a passive wait policy avoids that at no cost on an idle machine. Set before torch loads;
# an explicit user setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"


def load_pretrained(name_or_path=None, device=None, *, precision="float32"):
    """One-line load of the shipped model; see :func:`pccd.pipeline.load_pretrained`."""
    from pccd.generator import load_pretrained as _load  # `import pccd` stays light (no torch)

    return _load(name_or_path, device, precision=precision)


__all__ = ["__version__", "load_pretrained"]
