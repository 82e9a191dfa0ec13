"""Typed, validated configuration: scenarios, policies, controller settings."""
