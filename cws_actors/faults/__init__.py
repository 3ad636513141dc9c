"""Fault injection and chaos runs."""
