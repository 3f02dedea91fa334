"""Explain stage: attributions, their quality, and drift after compression (see issue 4)."""
