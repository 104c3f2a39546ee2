"""Proof of Attribution: trace an answer to the training contributions that shaped it (issue 6, in progress)."""
