"""Whether a graph can be trusted to give the answer the function would: one file per moment it is checked.

======================  ==========================================================================
file                    what it guarantees
======================  ==========================================================================
``at_capture_guard``    no host read or value-dependent shape runs inside the captured region
``at_capture_purity``   the function is a function of its inputs: warmups on the same inputs agree
``at_capture_rows``     padding rows never change a real row, and outputs are cut along the rows
``at_replay``           what the graph reads is still the tensor, address and Python value of capture
``in_production``       every N-th replay equals an eager run of the same call (shadow check)
``tolerance``           how two runs are compared: bitwise, or a dtype- and magnitude-scaled bound
``reachable``           what a function reads beyond its arguments (recorded at capture for the above)
``graph_safe_ops``      ops that vouch for their own graph safety (the guard lets them through)
======================  ==========================================================================

The runner (``graphcap.execute.runner``) consults the ``at_capture_*`` files while it
captures and hands ``at_replay``'s check to the entry; ``GraphedFunction``
runs the replay check and the shadow check. Nothing here imports the runner,
the registry or a backend: trust is consulted, it does not execute.
"""
