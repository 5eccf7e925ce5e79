"""Ray Serve deployments (thin) and the application builder in ``app.py``."""
