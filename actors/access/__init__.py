"""Who may do what: passwords and JWTs, agent keys, sign-in throttles, where the platform's secrets live."""
