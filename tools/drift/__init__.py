"""Drift: the live stack against its config (`make drift`), and putting it back (`make repair`)."""
