"""Two common designs, written small, for comparison only (never product code)."""
