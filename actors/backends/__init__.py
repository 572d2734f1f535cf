"""Where a cluster's nodes run (market leases or AWS): the backends, the launcher SDK's one caller, the EC2 calls."""
