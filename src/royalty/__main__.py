"""``python -m royalty`` is the ``royalty`` command."""

from .cli import main

main()
