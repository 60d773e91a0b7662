"""The evaluator service: greedy episodes on the learner's newest parameters, reported as metrics, to the
learner (TensorBoard, progress records), as best-eval.pt and as videos."""
