"""Deciding: which graph serves a call, or why the call runs eagerly. Pure: no graph is captured or replayed here.

* ``binding``: a call's arguments as one name -> value mapping, and back.
* ``pytree``: argument and output trees (tensors inside containers and objects are leaves).
* ``dispatch``: the decision for one call: eager with a reason, or a ``GraphKey``
  (bucket, tree, batched/static layout); recalled in one lookup in the steady state.
* ``agreement``: the same decision on every rank (one all-reduce per step).
* ``buckets``: rows -> bucket, and padding statistics.
* ``capture_sizes``: the capture-size lists engines ship.
* ``size_planner``: capture sizes from a trace (the exact planner, padding waste).
* ``replan``: capture sizes from observed traffic while serving.
* ``capture_plan``: a ``GraphSpec`` -> ``CapturePlan`` (``registry.plan()``).
"""
