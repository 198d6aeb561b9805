"""The DreamRelation method: adapters and losses. Knows nothing about files or jobs."""
