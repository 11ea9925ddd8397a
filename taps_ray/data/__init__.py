"""Data layer: named datasets (local copies first, then the hub), one Record type, mixtures,
and chat-template rendering with assistant-only loss masks.

Modules: paths (where the data folder is), records (Message/Record), parsers (row -> Record),
files / hub (reading local copies / the hub fallback), registry (names -> specs, resolve, load,
count), mixture (training mixes, benchmark subsets), render (token ids + loss mask).
Nothing is imported here, so `import taps_ray.data` does no work.
"""
