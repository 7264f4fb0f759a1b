"""The atom-level family: periodic diffusion over the atoms of a cell.

A crystal is a set of atoms (type, fractional coordinates) in a lattice, padded densely to 16
atoms. Fractional coordinates diffuse on the torus (wrapped normal, score matching), the lattice
by a DDPM on the 3×3 matrix scaled by the cell's expected size, and atom types by masking (an
absorbing state) within the requested element list, so one network does both crystal-structure
prediction (types given) and de novo generation (types drawn). The denoiser sees positions only
through fractional differences mod 1 and the lattice only through rotation-invariant products,
so its answers are periodic and permutation- and rotation-equivariant by construction — what
the point-cloud (row) family lacks (issue 27; the recipe is that of DiffCSP, Jiao et al. 2023,
arXiv 2309.04475, written anew here).
"""
