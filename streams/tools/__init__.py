"""Tools around the worker: bench, demo, backtest, replay, simulator and training.

They drive the runtime from outside (subprocesses, topics, the offline fold); nothing in the
runtime (streams/ worker, app, pipeline, reader, sinks/, rules/) imports this package.
"""
