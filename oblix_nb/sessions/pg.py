"""Old module path, kept for importers: the same module object as :mod:`.postgres.store`."""
import sys

from .postgres import store as _module

sys.modules[__name__] = _module
