"""Old module path, kept for importers: the same module object as :mod:`.sqlite.store`."""
import sys

from .sqlite import store as _module

sys.modules[__name__] = _module
