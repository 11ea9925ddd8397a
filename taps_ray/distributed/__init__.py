"""The Ray layer: Tune sweeps (`sweep`), live decoding over actors (`actors`) and the
benchmark matrix spread over a pool of workers (`bench`).

Everything here is a thin shell around the Ray-free core: trials call the ordinary training
pipeline, actors hold the ordinary TargetRunner and DrafterSession, bench workers call the
ordinary work-unit runner. Modules import `ray` themselves; importing this package does not.
"""
