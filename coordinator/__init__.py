"""The coordinator: node registry, liveness, and the policies that pair edges with cloud nodes.

Layering: imports only the wire package (``tandem_wire``) and its own pure modules; never a node
package. ``registry``, ``policy`` and ``nodes`` are pure and shared with the simulations;
``service`` is the gRPC edge.
"""
