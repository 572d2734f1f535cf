"""`dcluster up/down/status`: the platform Ray cluster on this machine, its state dir, its local provider agents."""
