"""The OpenAI-compatible HTTP API that edge nodes and the coordinator serve (docs/api.md)."""
