"""Speculative reasoning and PRM-guided search, as pure compute over two protocols.

- ``protocols``: the ``StepScorer`` protocol, importable without torch (the edge has none);
- ``scorers``: its PRM, LM-judge and exact-oracle implementations;
- ``prm``: the bundled task's process reward model (train, load, ROC AUC);
- ``proposer``: the ``StepProposer`` protocol and a proposer over any CausalLM;
- ``strategies``: the ``STRATEGIES`` registry (best-of-N, beam, DVTS, A*, particle filtering);
- ``compare``: every strategy on held-out problems, one table.

No gRPC and no wire types here: nodes convert at their RPC edge and call into this package.
"""
