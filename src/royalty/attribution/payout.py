"""The settlement link: an AttributionReceipt → the recipients of ``node.fees.settle_fee``.

Serving calls :func:`recipients` for every request: the adapter's owner gets the owner's share, and the
contributors' share is divided by the receipt's per-contributor weights (parts per million). A receipt with no
weights (neither influence nor spans credited anyone) gives no contributors, and ``split_fee`` then sends the
whole contributors' share to the treasury. The receipt and adapter ids are recorded on the settlement.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..errors import InvalidInput
from ..ledger.fees import FeeRecipients
from .receipts import AttributionReceipt

if TYPE_CHECKING:
    from ..factory.adapters import Adapter
    from ..node import Node


def recipients(node: Node, receipt: AttributionReceipt | dict[str, Any], adapter: Adapter) -> FeeRecipients:
    """Who the fee of the request ``receipt`` attributes is paid to. ``adapter`` must be the receipt's adapter
    (InvalidInput otherwise); its owner is read from ``node``'s registry, the authority on who owns it."""
    r = receipt if isinstance(receipt, AttributionReceipt) else AttributionReceipt.parse(receipt)
    if r.adapter.id != adapter.id:
        raise InvalidInput(f"receipt {r.receipt_id} attributes adapter {r.adapter.name}@{r.adapter.version} "
                           f"({r.adapter.id}), not {adapter.ref} ({adapter.id})", field="adapter")
    registered = node.adapters.get(adapter.id)
    return FeeRecipients(owner=registered.owner, contributors=dict(r.weights.contributors), receipt_id=r.receipt_id,
                         adapter_id=registered.id)
