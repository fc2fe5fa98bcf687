"""``python -m vaelab``: the same as the ``vaelab`` console script."""

from vaelab.cli import main

if __name__ == "__main__":
    main()
