"""Losses, matchers and the trainer."""
