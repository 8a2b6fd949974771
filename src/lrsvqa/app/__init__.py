"""The application: command line, demo, the embedded default model, ``ask``, overlays."""
