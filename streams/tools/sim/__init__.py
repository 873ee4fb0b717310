"""`churnlight simulate`: a seeded, deterministic, labelled synthetic operator (DOMAIN.md).

History lines follow CONTRACT §6. Two extensions, both understood by `streams.tools.replay.parse_line`:
a line may carry `"key"` (the Kafka key, when it is not `value.msisdn`: profile deletions and the
deliberate key mismatches), and a record that is not valid JSON is carried as
`{"topic": ..., "key": ..., "bad": "invalid_json", "raw": "<the text sent as the value>"}`.
Every deliberately bad record also carries `"bad": <kind>` (one of `render.BAD_KINDS`); replay
ignores it, tests and the backtest may count it.
"""

from streams.tools.sim.config import SimConfig
from streams.tools.sim.run import (
    SimStats,
    Simulation,
    iter_history,
    iter_history_lines,
    write_history,
    write_labels,
)

__all__ = [
    "SimConfig",
    "SimStats",
    "Simulation",
    "iter_history",
    "iter_history_lines",
    "write_history",
    "write_labels",
]
