"""Adapters for third-party model libraries; each subpackage imports its library, the core never does.

* ``graphcap.integrations.paddleformers``: a static KV cache and a graphed
  decode loop for PaddleFormers causal LMs (``pip install 'graphcap[paddleformers]'``).
"""
