"""The daemon around the stages: its loops, leader election, the health and metrics
port, systemd notification."""
