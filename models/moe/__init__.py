"""Mixture-of-Experts models with their experts offloaded: layouts, cache, prediction, costs.

Torch-free at import: the torch parts (``model``, ``routing``, ``offload``, ``hf``, ``train``)
are imported by name where they are used.
"""
