"""DreamRelation Studio web app (entry point).

Until the full app lands (masks, background training jobs, gallery), this serves a working generation page:
pick a base model and a trained relation LoRA folder, type a prompt, get a video. It honours
GRADIO_SERVER_NAME / GRADIO_SERVER_PORT (as Spaces sets them) and DREAMRELATION_MODEL (default: the
embedded toy model when present, else tiny-random).
"""

import os

from ui.generate_page import build_demo

if __name__ == "__main__":
    build_demo(default_model=os.environ.get("DREAMRELATION_MODEL")).launch()
