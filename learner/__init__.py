"""The learner service: owns the global actor-critic, applies pushed gradients, serves parameters."""
