"""The model lifecycle: the registry, shadow/canary/blue-green rollout and its controllers, the
degrees of automation with the review queue, production labels, and retraining with its gate.
The simulator that exercises all of it lives in `serving.simulation`."""
