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


class CrashOnSilver(EMT):
    """EMT whose process dies (as if killed) when it meets silver: a task that kills workers."""

    def calculate(self, atoms=None, *args, **kwargs):
        import os

        if atoms is not None and "Ag" in atoms.get_chemical_symbols():
            os._exit(1)
        return super().calculate(atoms, *args, **kwargs)


def crash_on_silver() -> CrashOnSilver:
    return CrashOnSilver()
