"""``python -m taylor``: the same as the ``taylor`` command."""

from .cli import main

if __name__ == "__main__":
    main()
