"""Tools an agent can call: typed functions with JSON Schemas (step 4)."""
