"""Old module path, kept for importers: the same module object as :mod:`.postgres.migrations`."""
import sys

from .postgres import migrations as _module

sys.modules[__name__] = _module
