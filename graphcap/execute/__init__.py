"""Executing what ``graphcap.decide`` decided: stage inputs, capture a graph, replay it.

* ``runner``: one graph's lifecycle: staging into static buffers, warmups, the
  purity and row checks (consulting ``graphcap.trust``), capture, verification, replay.
* ``backends``: how a graph is captured and replayed: ``eager`` (re-runs the
  function), ``static`` (a ``to_static`` program), ``device`` (Paddle's ``CUDAGraph``).
"""
