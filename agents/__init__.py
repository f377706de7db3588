"""Agents: a model role, a system prompt, tools and an output type bound together."""

from slmflow.agents.agent import Agent, AgentEvent, AgentLimits, AgentResult

__all__ = ["Agent", "AgentEvent", "AgentLimits", "AgentResult"]
