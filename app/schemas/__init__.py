"""Request and response models of the HTTP API, and the workflow definition format."""
