"""Phase 2: the model lifecycle (registry, rollout, automation, retraining, simulation)."""
