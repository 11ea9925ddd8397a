"""The cost model: a measured profile of this machine (profile, calibrate) and the predicted
tokens/s of a speculative configuration from it (predict). Pure core: no Ray."""
