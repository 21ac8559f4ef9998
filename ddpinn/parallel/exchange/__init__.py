"""The halo exchange: a plan built once per point sampling (:mod:`.plan`) and a differentiable
operator that executes it every step (:mod:`.op`)."""
