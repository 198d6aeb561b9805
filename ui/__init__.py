"""Gradio layout and callbacks only: no torch, no diffusers; everything goes through `dreamrelation`."""
