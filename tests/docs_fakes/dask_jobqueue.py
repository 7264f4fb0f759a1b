"""A stand-in ``dask_jobqueue`` for the SLURM block of docs/tutorials/cluster.md (tests only).

``SLURMCluster`` takes the real one's job arguments and starts one local worker thread
instead of SLURM jobs, so the block tests what pccd does with a cluster object, not SLURM.
"""

from __future__ import annotations

import functools

from distributed import LocalCluster


class SLURMCluster(LocalCluster):
    def __init__(self, *, cores=1, processes=1, memory="", walltime="", **job_options):
        self.job_options = {"cores": cores, "processes": processes, "memory": memory,
                            "walltime": walltime, **job_options}  # fmt: skip
        super().__init__(n_workers=0, processes=False, threads_per_worker=1, dashboard_address=None)
        # closing waits 10 s for the event-loop thread by default; a busy test machine needs more
        self._loop_runner.stop = functools.partial(self._loop_runner.stop, timeout=120)

    def scale(self, n=None, jobs=0, **kwargs):
        return super().scale(1)
