"""Video IO and the relation dataset folder."""
