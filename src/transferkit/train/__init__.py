"""Training and feature extraction machinery shared by every strategy."""
