"""`churnlight bench`: the command is streams.tools.bench.command.bench; its steps are modules here."""

from streams.tools.bench.command import bench as bench

__all__ = ["bench"]
