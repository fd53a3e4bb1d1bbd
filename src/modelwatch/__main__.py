"""Allow ``python -m modelwatch``."""

from modelwatch.cli import main

main()
