"""DreamRelation Studio: teach a video diffusion model a relation between two subjects from a few videos."""

__version__ = "0.1.0"
