"""Model families: each a complete generator (network, noise processes, sampler, training).

A family plugs into the rest of pccd through :mod:`pccd.generator` (the protocol every family's
pipeline implements and the registry that maps a model directory's ``family`` to its loader).
"""
