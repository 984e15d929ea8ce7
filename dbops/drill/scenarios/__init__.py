"""The built-in drill scenarios, one module per engine."""
