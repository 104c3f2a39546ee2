"""Datanets: attributed data collections with provenance, curation, deduplication, versions and proofs.

``records`` (schemas, canonical content, ids), ``formats`` (file readers), ``dedup`` (near-duplicates),
``registry`` (the ``Datanets`` service), ``versions`` (publish, proofs), ``export`` (JSONL, Parquet, datasets).
"""

from .registry import Contribution, ContributionReport, Datanet, DatanetLimits, Datanets
from .versions import DatanetVersion, verify_proof

__all__ = ["Contribution", "ContributionReport", "Datanet", "DatanetLimits", "DatanetVersion", "Datanets", "verify_proof"]
