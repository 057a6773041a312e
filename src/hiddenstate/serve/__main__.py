"""``python -m hiddenstate.serve RUN_DIR``: the same as ``hiddenstate serve RUN_DIR``."""

from hiddenstate.serve.command import main

main()
