"""The semi-supervised methods, one module each, and what they share.

``registry`` (the ``Method`` type, ``register_method``, the entry-point group
``semimatch.methods``, ``build_algorithm``), ``consistency`` (the weighted pseudo-label
consistency composition ``SSLAlgorithm`` and the step's ``Needs``/``StepOutputs``), the building
blocks ``blocks`` (the weighting protocol, checks, ``sharpen``) and ``alignment``, and one
module per method: ``supervised``, ``pseudolabel``, ``fixmatch``, ``flexmatch``, ``softmatch``,
``freematch``, ``adamatch``, ``dash``, ``uda``.  Nothing is re-exported here: import a name
from the module that defines it.
"""
