"""Device simulators: profiles' behaviour, scenarios and load generation."""
