"""Agents: a model role, a system prompt, tools and an output type bound together (step 4)."""
