"""RTP receive and recording."""
