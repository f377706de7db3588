"""Eval scenarios and their runner (step 4)."""
