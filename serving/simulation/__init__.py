"""The simulator and the replay: synthetic users and recorded traffic against a real server, to
watch the monitors, the rollout and retraining react (`voice-search simulate`, `scripts/replay_shifts.py`)."""
