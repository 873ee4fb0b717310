"""The worker's runtime: reading partitions, sequencing offsets, the state store and its codec, the commit protocol."""
