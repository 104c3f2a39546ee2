"""royalty: an accountable data economy for AI.

Start here::

    import royalty
    node = royalty.open_node("path/to/home")   # or royalty.init_node(...) for a new one
    node.accounts, node.journal, node.blobs, node.store

See docs/ARCHITECTURE.md for the map.
"""

from .errors import RoyaltyError
from .node import Node, init_node, open_node

__version__ = "0.1.0"

__all__ = ["Node", "RoyaltyError", "__version__", "init_node", "open_node"]
