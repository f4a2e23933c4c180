"""The running agent: its lifecycle (lifecycle.py: bind -> setup -> serve -> drain -> teardown), live
reload of its config (reload.py: knows a config source and a callback, nothing of the agent) and the
periodic tasks every part of it runs (periodic.py: one failure policy for all)."""
