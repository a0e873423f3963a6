"""Old module path, kept for importers: the same module object as :mod:`.sqlite.migrations`."""
import sys

from .sqlite import migrations as _module

sys.modules[__name__] = _module
