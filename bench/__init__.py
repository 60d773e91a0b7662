"""`make bench`: a3c-grpc held against its compute ceiling and against Stable-Baselines3 A2C on one machine."""
