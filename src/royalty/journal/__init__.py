"""The journal: an append-only Merkle log (RFC 6962/9162) of every state change, with signed checkpoints.

Writer side: ``merkle`` (tree and proofs), ``canonical`` (event bytes), ``checkpoint`` (signed notes), ``log``
(the Journal service). Verifier side, sharing no code with the writer: ``verify`` (RFC 9162 proof checks and
tree replay) and ``audit`` (whole-journal replay, notes, proof bundles).
"""
