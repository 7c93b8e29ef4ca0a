"""What every runrelay process shares: settings, models, keys, backends, run lifecycle."""
