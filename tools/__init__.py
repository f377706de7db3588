"""Tools an agent can call: typed functions with JSON Schemas from their signatures."""

from slmflow.tools.base import Tool, ToolError, ToolRegistry, ToolResult, tool
from slmflow.tools.builtin import calculator, current_time, file_tools

__all__ = ["Tool", "ToolError", "ToolRegistry", "ToolResult", "calculator", "current_time", "file_tools", "tool"]
