"""A stand-in ``dask_jobqueue`` for the SLURM block of docs/tutorials/cluster.md (tests only).

``SLURMCluster`` takes the real one's job arguments but starts one local worker process
(``python -m dask spec``) instead of SLURM jobs, so the block tests what pccd does with a
cluster object, not SLURM. Like the real class it is a ``SpecCluster`` with the scheduler in
the calling process and each worker in a process of its own: an in-process worker
(``LocalCluster(processes=False)``) intermittently hangs on close in distributed 2026.11.
"""

from __future__ import annotations

from distributed import Scheduler, SpecCluster
from distributed.deploy.subprocess import SubprocessWorker


class SLURMCluster(SpecCluster):
    def __init__(self, *, cores=1, processes=1, memory="", walltime="", **job_options):
        self.job_options = {"cores": cores, "processes": processes, "memory": memory,
                            "walltime": walltime, **job_options}  # fmt: skip
        scheduler = {"cls": Scheduler,
                     "options": {"host": "127.0.0.1", "port": 0, "dashboard": False}}  # fmt: skip
        worker = {"cls": SubprocessWorker,
                  "options": {"worker_class": "distributed.Worker",
                              "worker_kwargs": {"nthreads": 1, "host": "127.0.0.1",
                                                "dashboard": False}}}  # fmt: skip
        super().__init__(scheduler=scheduler, worker=worker, workers={}, name="fake-SLURMCluster")

    def scale(self, n=None, jobs=0, **kwargs):
        """Any request for workers gets one (this is one machine); 0 (closing) gets none."""
        return super().scale(1 if (n or jobs) else 0)
