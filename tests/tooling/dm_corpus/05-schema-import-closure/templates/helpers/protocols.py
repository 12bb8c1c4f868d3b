"""Protocol names as the Compute Engine API stores them."""

TCP = "tcp"
UDP = "udp"
