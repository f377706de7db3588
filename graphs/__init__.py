"""LangGraph graphs wiring agents together (steps 5 and 6)."""
