"""Schemathesis hooks for tests/service/test_fuzz.py (loaded through SCHEMATHESIS_HOOKS).

`budget_ms` is the client's own deadline (docs/cascade.md): a request naming a model that cannot be
answered within it gets 504 by design, which Schemathesis's server-error check would count as a
fault. The schema cannot say "a budget the model can meet", so numeric budgets are raised to one
that a tiny test model always meets; budgets of the wrong type still reach the service (422).
"""

from __future__ import annotations

import schemathesis

MIN_BUDGET_MS = 10_000.0  # far above a tiny model's answer time, well under request_timeout_s (30 s)


@schemathesis.hook
def map_query(context, query):
    budget = (query or {}).get("budget_ms")
    if isinstance(budget, (int, float)) and not isinstance(budget, bool) and budget < MIN_BUDGET_MS:
        return {**query, "budget_ms": MIN_BUDGET_MS}
    return query
