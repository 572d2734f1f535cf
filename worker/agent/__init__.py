"""The provider agent: runs on providers' machines (detection, registration, heartbeats, leased nodes)."""
