"""Compression stage: quantize, prune, distill and export trained artifacts (see issue 3)."""
