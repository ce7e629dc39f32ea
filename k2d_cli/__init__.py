"""The ``k2d`` command line: store, training, evaluation, serving and load tests under one entry point.

It lives apart from the torch-free core ``k2d/`` (which must not import ``app``, ``k2d_train`` or
``loadtest``): the CLI is the one place that knows every package, and imports each lazily.
"""
