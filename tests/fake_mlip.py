"""Fast stand-in MLIPs for CLI tests: ASE's EMT, optionally slowed down (``--mlip`` factories)."""

from __future__ import annotations

import time

from ase.calculators.emt import EMT


class SlowEMT(EMT):
    """EMT that sleeps 0.1 s per calculation, so a screen can be killed mid-run."""

    def calculate(self, *args, **kwargs):
        time.sleep(0.1)
        return super().calculate(*args, **kwargs)


def slow_emt() -> SlowEMT:
    return SlowEMT()
