"""The aws backend: a buyer cluster's head and GPU workers are EC2 instances, through Ray's own AWS provider."""
