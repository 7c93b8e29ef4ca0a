"""runrelay: the SDK and the CLI."""
