"""``python -m taylor``: the same as the ``taylor`` command.

Only starts :mod:`taylor.cli`; nothing imports it.
"""

from .cli import main

if __name__ == "__main__":
    main()
