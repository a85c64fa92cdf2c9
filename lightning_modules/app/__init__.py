"""The application built on the plugin: command line, demo, experiment recipes, run folders.

Nothing in the plugin (``energymask.lightning_modules``) imports from here.
"""
