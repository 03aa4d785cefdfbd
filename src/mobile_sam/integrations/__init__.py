"""Adapters for annotation tools. Each imports its tool's package only if installed.

- `label_studio`: a Label Studio ML backend (clicks and boxes -> brush or polygon results).
"""
