"""The old name of :mod:`taylor.shared`, kept so that ``from taylor.util import SharedNumpyArray`` works.

taylorism programs import ``taylorism.util.SharedNumpyArray``; changing ``taylorism`` to ``taylor``
in them must be enough.  New code imports :mod:`taylor.shared`.  Nothing else belongs here.
"""

from .shared import SharedNumpyArray

__all__ = ["SharedNumpyArray"]
