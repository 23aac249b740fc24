"""Step types: the Step protocol, the built-in steps and the plugin registry."""
