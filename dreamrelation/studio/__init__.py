"""The app's use cases without any UI: datasets with masks, training jobs, generation, downloads.

`Studio` is what `ui/` calls; everything a browser or a gradio_client can do goes through it, scoped to an
owner (a session or a logged-in user), so the UI holds layout and callbacks only.
"""

from dreamrelation.studio.service import Studio
from dreamrelation.studio.workspace import StudioError, Workspace, default_home

__all__ = ["Studio", "StudioError", "Workspace", "default_home"]
