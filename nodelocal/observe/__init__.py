"""What the agent shows about itself: meters.py gathers every capability's counters (each declares its own
in its metrics.py) into the registry behind /metrics; http.py serves /metrics, /health, /ready and the
live page (page.py, assets/), whose data comes from live.py (sampled top lists via topk.py, history)."""
