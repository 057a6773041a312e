"""``python -m hiddenstate``: the same as the ``hiddenstate`` command."""

from hiddenstate.cli import main

main()
