"""``PPL_NO_SHRINK=1`` keeps the loaded hypothesis profile but skips shrinking (quick triage of
a failure, e.g. when checking that a planted bug is caught)."""

import os

from hypothesis import Phase, settings

if os.environ.get("PPL_NO_SHRINK"):
    settings.register_profile("_no_shrink", parent=settings.default,
                              phases=[p for p in Phase if p is not Phase.shrink])
    settings.load_profile("_no_shrink")
