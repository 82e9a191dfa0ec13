"""gpuscale."""
