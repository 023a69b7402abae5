"""A small shop served on loopback: the built-in web environment's application."""
