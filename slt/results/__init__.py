"""Pieces every result type shares: JSON conversion and figure panels."""
