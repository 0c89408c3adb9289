"""``python -m lmlab``: the command line (``lmlab.cli``)."""

from lmlab.cli import main

if __name__ == "__main__":
    main()
