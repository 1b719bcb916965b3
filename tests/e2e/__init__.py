"""End-to-end tests: server, daemon, kamailio and sipp carriers on loopback."""
