"""The commands of the trajforge CLI, one concern per module; trajforge/cli.py registers them on
its app, and common.py holds what they share."""
