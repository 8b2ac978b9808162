"""Long rollouts from initial conditions, scored against data."""
