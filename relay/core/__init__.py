"""The ground floor: the relay's shared vocabulary and plumbing (rows and outcomes, states and
codes, settings, errors, logs, metrics, systemd). Everything may import it; it imports nothing
of the relay's above it."""
