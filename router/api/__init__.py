"""The HTTP faces of the router: one module per protocol."""
