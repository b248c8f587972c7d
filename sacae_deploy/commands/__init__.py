"""One module per `sacae` command group; each exposes `register(app)`."""
