"""Clock, seeded randomness and the error taxonomy shared by every layer."""
