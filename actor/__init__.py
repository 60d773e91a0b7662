"""The actor service: plays the environment, computes A3C gradients locally, pushes them to the learner."""
